"""FastMCP middleware: ``tools/list`` shows only the tools the caller may call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastmcp.server.dependencies import get_http_request
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcpauth.context import SCOPE_KEY, CallContext
from mcpauth.tools import visible_tools


class ToolVisibility(Middleware):
    async def on_list_tools(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Sequence[Any]:
        tools = await call_next(context)
        try:
            ctx = get_http_request().scope.get(SCOPE_KEY)
        except RuntimeError:
            return []
        if not isinstance(ctx, CallContext) or ctx.principal is None:
            return []
        allowed = visible_tools(ctx.principal)
        return [t for t in tools if t.name in allowed]
