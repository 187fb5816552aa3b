from django.apps import AppConfig


class MCPAuthConfig(AppConfig):
    name = "mcpauth"
    verbose_name = "MCP authorization"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from mcpauth import checks, scopes, tenancy  # noqa: F401  (register checks and signals)
        from mcpauth.observability import checks as observability_checks  # noqa: F401
        from mcpauth.registry import autodiscover

        # Every installed app's mcp.py registers its tools, as admin.py registers models.
        autodiscover()
