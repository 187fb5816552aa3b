"""The ``/mcp`` ASGI application: governance in front of the platform's MCP server.

:class:`MCPApplication` owns one FastMCP Starlette app (``stateless_http=True``,
``json_response=True``) for the server :func:`mcpauth.server.get_server` built from the tool
registry. Its ``lifespan`` must run (it starts the MCP SDK's session manager); Django's ASGI
handler rejects lifespan, so the project's composition (``config/asgi.py``) forwards it here.
FastMCP's app instance can run its lifespan once, so a restart needs a new ``MCPApplication``.
"""

from __future__ import annotations

from mcpauth.conf import get_settings
from mcpauth.middleware import GovernedMCP
from mcpauth.server import get_server
from mcpauth.transport import Transport
from mcpauth.types import Receive, Scope, Send

MCP_PATH = "/mcp"


class MCPApplication:
    """``await app(scope, receive, send)`` for ``/mcp`` requests and for the lifespan."""

    def __init__(self) -> None:
        server = get_server()
        self.http_app = server.http_app(path=MCP_PATH, stateless_http=True, json_response=True)
        self.transport = Transport(
            server, self.http_app, fast=lambda: get_settings().fast_transport
        )
        self.governed = GovernedMCP(self.transport)

    @staticmethod
    def handles(path: str) -> bool:
        return path == MCP_PATH or path.startswith(MCP_PATH + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.http_app(scope, receive, send)  # type: ignore[arg-type]
        else:
            await self.governed(scope, receive, send)
