"""Governed MCP tools, resources and prompts for Django apps.

Public API (see the README's "Add your own tools")::

    from mcpauth import current_principal, prompt, resource, tool
"""

from mcpauth.components import prompt, resource
from mcpauth.context import current_principal
from mcpauth.registry import tool

__all__ = ["current_principal", "prompt", "resource", "tool"]
