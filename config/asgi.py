"""ASGI entry point: ``uvicorn config.asgi:application`` serves everything.

* ``/mcp`` → ``mcpauth.asgi.MCPApplication``: governance, then the platform's MCP server, which
  ``mcpauth`` builds from every installed app's ``mcp.py`` (stateless streamable HTTP, JSON);
* everything else → Django (admin, health, API docs, protected-resource metadata);
* ``lifespan`` → the MCP application, whose lifespan must run (Django's handler rejects it).

Every HTTP request logs one access line (``mcpauth.observability``): ``/mcp`` from the
governance middleware, the rest from :func:`~mcpauth.observability.request.access_logged`.

Startup fails with a clear message when mcpauth is misconfigured (system checks ``mcpauth.E*``).
"""

from __future__ import annotations

import os
from typing import cast

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.DEBUG:  # like runserver: serve admin assets in development only
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_app = ASGIStaticFilesHandler(django_app)

from mcpauth.asgi import MCPApplication  # noqa: E402
from mcpauth.checks import assert_startup_ready  # noqa: E402
from mcpauth.observability import setup as setup_observability  # noqa: E402
from mcpauth.observability.request import access_logged  # noqa: E402
from mcpauth.types import ASGIApp, Receive, Scope, Send  # noqa: E402

assert_startup_ready()
setup_observability()  # tracing (OTEL_*), JSON warnings; mcpauth.E020-E023 stop startup


def build_application() -> ASGIApp:
    """A fresh composed app. The MCP lifespan runs once per app, so a restart needs a new one."""
    mcp_app = MCPApplication()
    # uvicorn's access log is off: Django's requests get their one line here, /mcp's from
    # the governance middleware
    django = access_logged(cast(ASGIApp, django_app))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or mcp_app.handles(scope.get("path", "")):
            await mcp_app(scope, receive, send)
            return
        await django(scope, receive, send)

    return app


application = build_application()
