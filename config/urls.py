from django.contrib import admin
from django.urls import path

from config.api import api
from mcpauth import views
from mcpauth.observability import views as observability_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path(
        ".well-known/oauth-protected-resource/mcp",
        views.protected_resource_metadata,
        name="protected-resource-metadata",
    ),
    path(
        ".well-known/oauth-protected-resource",
        views.protected_resource_metadata,
        name="protected-resource-metadata-root",
    ),
    path("dev-issuer/jwks.json", views.dev_jwks, name="dev-jwks"),
    path(
        "dev-issuer/.well-known/openid-configuration",
        views.dev_openid_configuration,
        name="dev-openid-configuration",
    ),
    path("metrics", observability_views.metrics, name="metrics"),
    path("", api.urls),
]
