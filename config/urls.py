"""The reference project's URLs: the documented contract, plus its own API docs.

``include("mcpauth.urls")`` serves the protected-resource metadata, ``/health``,
``/health/ready``, the development issuer's documents and ``/metrics``; ``/mcp`` is served by
the ASGI application (``config/asgi.py``).
"""

from django.contrib import admin
from django.urls import include, path

from config.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("mcpauth.urls")),
    path("", api.urls),  # /api/docs: OpenAPI documentation of the health endpoints
]
