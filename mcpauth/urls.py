"""Everything ``mcpauth`` serves besides ``/mcp`` itself: ``path("", include("mcpauth.urls"))``.

* ``/.well-known/oauth-protected-resource{MCPAUTH_PATH}`` and
  ``/.well-known/oauth-protected-resource``: the protected-resource metadata (RFC 9728) that the
  401's ``resource_metadata`` points to;
* ``/health`` and ``/health/ready``: liveness and readiness (:mod:`mcpauth.health`);
* ``/dev-issuer/jwks.json`` and ``/dev-issuer/.well-known/openid-configuration``: the
  development issuer's documents (404 unless it is the active issuer);
* ``/metrics``: Prometheus metrics, for allowed callers (:mod:`mcpauth.observability.views`).

``/mcp`` is served by the ASGI application (:func:`mcpauth.asgi.get_asgi_application`), in
front of Django.
"""

from __future__ import annotations

from django.urls import URLPattern, path

from mcpauth import health, views
from mcpauth.conf import get_settings
from mcpauth.observability import views as observability_views

urlpatterns: list[URLPattern] = [
    path(
        get_settings().resource_metadata_path.lstrip("/"),
        views.protected_resource_metadata,
        name="protected-resource-metadata",
    ),
    path(
        ".well-known/oauth-protected-resource",
        views.protected_resource_metadata,
        name="protected-resource-metadata-root",
    ),
    path("health", health.live, name="health"),
    path("health/ready", health.ready, name="health-ready"),
    path("dev-issuer/jwks.json", views.dev_jwks, name="dev-jwks"),
    path(
        "dev-issuer/.well-known/openid-configuration",
        views.dev_openid_configuration,
        name="dev-openid-configuration",
    ),
    path("metrics", observability_views.metrics, name="metrics"),
]
