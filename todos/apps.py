from django.apps import AppConfig


class TodosConfig(AppConfig):
    name = "todos"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the MCP tools (and their permissions) under any entry point: ASGI, WSGI,
        # management commands; the admin's tool filter reads the registry.
        from todos import mcp  # noqa: F401
