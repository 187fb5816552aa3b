"""The MCP endpoint at ``/mcp``, as django-mcp-server's README says."""

from django.urls import include, path

urlpatterns = [path("", include("mcp_server.urls"))]
