"""The project's ASGI application: governed ``/mcp`` in front of Django.

A project's ``asgi.py`` is two lines (after ``DJANGO_SETTINGS_MODULE`` is set)::

    from mcpauth.asgi import get_asgi_application

    application = get_asgi_application()

:func:`get_asgi_application` sets Django up, runs the startup checks (``mcpauth`` errors stop
the server with a clear message), sets up tracing and logs, and returns an app that sends

* ``MCPAUTH_PATH`` (``/mcp``, and anything below it) → :class:`MCPApplication`: governance,
  then the platform's MCP server built from every installed app's ``mcp.py``;
* ``lifespan`` → the MCP application, whose lifespan must run (it starts the MCP SDK's session
  manager; Django's handler rejects lifespan);
* everything else → Django (admin, ``mcpauth.urls``, the project's own views), with static
  files served while ``DEBUG`` is on, as ``runserver`` does.

Every HTTP request logs one access line (``mcpauth.access``): ``/mcp`` from the governance
middleware, the rest from :func:`~mcpauth.observability.request.access_logged`. Nothing here
touches Django's app registry at import time, so a project may import it first thing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from mcpauth.conf import get_settings
from mcpauth.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcpauth.edge.pipeline import GovernedMCP
    from mcpauth.runtime.transport import Transport

__all__ = ["MCPApplication", "build_application", "get_asgi_application"]


class MCPApplication:
    """``await app(scope, receive, send)`` for ``/mcp`` requests and for the lifespan.

    It owns one FastMCP Starlette app (``stateless_http=True``, ``json_response=True``) for the
    server :func:`mcpauth.runtime.server.get_server` built from the registry. FastMCP's app runs its
    lifespan once, so a restart needs a new ``MCPApplication``.
    """

    def __init__(self) -> None:
        from mcpauth.edge.pipeline import GovernedMCP
        from mcpauth.runtime.server import get_server
        from mcpauth.runtime.transport import Transport

        self.path = get_settings().path
        server = get_server()
        self.http_app = server.http_app(path=self.path, stateless_http=True, json_response=True)
        self.transport: Transport = Transport(
            server, self.http_app, fast=lambda: get_settings().fast_transport
        )
        self.governed: GovernedMCP = GovernedMCP(self.transport)

    def handles(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.http_app(scope, receive, send)  # type: ignore[arg-type]
        else:
            await self.governed(scope, receive, send)


def _django_application() -> ASGIApp:
    from django.conf import settings
    from django.core.asgi import get_asgi_application as django_asgi_application

    app = cast(ASGIApp, django_asgi_application())  # django.setup()
    from django.apps import apps

    if settings.DEBUG and apps.is_installed("django.contrib.staticfiles"):
        # like runserver: static files (the admin's, the audit overview's) in development only
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        app = cast(ASGIApp, ASGIStaticFilesHandler(app))  # type: ignore[arg-type]
    return app


def build_application(django_app: ASGIApp | None = None) -> ASGIApp:
    """A fresh composed app (``/mcp``, lifespan, Django), without the startup checks.

    The MCP lifespan runs once per app, so a restart (a test's second server) needs a new one.
    """
    from mcpauth.observability.request import access_logged

    django = access_logged(django_app if django_app is not None else _django_application())
    mcp_app = MCPApplication()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or mcp_app.handles(scope.get("path", "")):
            await mcp_app(scope, receive, send)
            return
        await django(scope, receive, send)

    return app


def get_asgi_application() -> ASGIApp:
    """Set Django up, check the configuration, and return the whole ASGI application."""
    django_app = _django_application()
    from mcpauth.checks import assert_startup_ready
    from mcpauth.observability import setup as setup_observability

    assert_startup_ready()
    setup_observability()  # tracing, JSON warnings; mcpauth.E020-E023 stop startup too
    return build_application(django_app)
