"""ASGI entry point: ``uvicorn config.asgi:application`` serves everything.

* ``/mcp`` → the governance middleware (``mcpauth.middleware.GovernedMCP``) → FastMCP
  (stateless streamable HTTP, JSON responses);
* everything else → Django (admin, health, API docs, protected-resource metadata);
* ``lifespan`` → FastMCP's app, whose lifespan must run (Django's ASGI handler rejects it).

Startup fails with a clear message when mcpauth is misconfigured (system checks ``mcpauth.E*``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.DEBUG:  # like runserver: serve admin assets in development only
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_app = ASGIStaticFilesHandler(django_app)

from mcpauth.checks import assert_startup_ready  # noqa: E402
from mcpauth.middleware import GovernedMCP  # noqa: E402
from todos.mcp import mcp  # noqa: E402

assert_startup_ready()

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def build_application() -> ASGIApp:
    """A fresh composed app. FastMCP's lifespan runs once per app, so a restart needs a new one."""
    mcp_app = mcp.http_app(path="/mcp", stateless_http=True, json_response=True)
    governed_mcp = GovernedMCP(mcp_app)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await mcp_app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == "/mcp" or path.startswith("/mcp/"):
            await governed_mcp(scope, receive, send)
            return
        await cast(ASGIApp, django_app)(scope, receive, send)

    return app


application = build_application()
