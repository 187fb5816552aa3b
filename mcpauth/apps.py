from django.apps import AppConfig


class MCPAuthConfig(AppConfig):
    name = "mcpauth"
    verbose_name = "MCP authorization"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from mcpauth import checks, rls, scopes, tenancy  # noqa: F401  (checks and signals)
        from mcpauth.observability import checks as observability_checks  # noqa: F401
        from mcpauth.registry import autodiscover

        # PostgreSQL row-level security: every connection checks its tenant before each
        # statement; policies and composite keys are (re)installed after every migrate.
        connection_created.connect(rls.install_wrapper, dispatch_uid="mcpauth-rls")
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:
                rls.install_wrapper(connection)
        post_migrate.connect(rls.post_migrate, sender=self, dispatch_uid="mcpauth-rls")

        # Downstream calls: their system checks, and SQLite's write lock released while a sync
        # tool waits on one (mcpauth.downstream.sqlite).
        from mcpauth.downstream import checks as downstream_checks  # noqa: F401
        from mcpauth.downstream.sqlite import install_tracker

        connection_created.connect(install_tracker, dispatch_uid="mcpauth-downstream-sqlite")
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:
                install_tracker(connection)

        # Every installed app's mcp.py registers its tools, as admin.py registers models.
        autodiscover()
