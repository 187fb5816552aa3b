"""Governed MCP tools, resources and prompts for Django apps.

Public API (see the README's "Add your own tools" and docs/tools.md)::

    from mcpauth import Principal, current_principal, prompt, resource, tool
"""

from mcpauth.components import prompt, resource
from mcpauth.context import current_principal
from mcpauth.registry import tool
from mcpauth.values import Principal

__all__ = ["Principal", "current_principal", "prompt", "resource", "tool"]
