"""Governed MCP tools for Django apps.

Public API (see the README's "Add your own tools")::

    from mcpauth import current_principal, tool
"""

from mcpauth.context import current_principal
from mcpauth.registry import tool

__all__ = ["current_principal", "tool"]
