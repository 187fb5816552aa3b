"""Governed MCP tools, resources and prompts for Django apps.

Public API (see the README's "Add your own tools")::

    from mcpauth import current_principal, downstream, prompt, resource, tool
"""

from mcpauth import downstream
from mcpauth.runtime.components import prompt, resource
from mcpauth.runtime.context import current_principal
from mcpauth.runtime.registry import tool

__all__ = ["current_principal", "downstream", "prompt", "resource", "tool"]
