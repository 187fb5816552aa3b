from django.apps import AppConfig


def _tenant_choices(limit: int) -> list[tuple[str, str]]:
    from mcpauth.models import Tenant

    rows = Tenant.objects.order_by("external_id").values_list("external_id", "name")
    return list(rows[:limit])


def _tenant_exists(external_id: str) -> bool:
    from mcpauth.models import Tenant

    return Tenant.objects.filter(external_id=external_id).exists()


def _tool_names() -> list[str]:
    from mcpauth.runtime.registry import registry

    return registry.names()


class MCPAuthConfig(AppConfig):
    name = "mcpauth"
    verbose_name = "MCP authorization"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from mcpauth import checks, rls  # noqa: F401  (checks and signals)
        from mcpauth.identity import scopes, tenancy  # noqa: F401  (checks and signals)
        from mcpauth.observability import checks as observability_checks  # noqa: F401
        from mcpauth.observability import prepare_metrics_dir
        from mcpauth.runtime.registry import autodiscover

        # PostgreSQL row-level security: every connection checks its tenant before each
        # statement; policies and composite keys are (re)installed after every migrate.
        connection_created.connect(rls.install_wrapper, dispatch_uid="mcpauth-rls")
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:
                rls.install_wrapper(connection)
        post_migrate.connect(rls.post_migrate, sender=self, dispatch_uid="mcpauth-rls")

        # MCPAUTH_METRICS_DIR exists and prometheus_client knows it before anything counts.
        prepare_metrics_dir()
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

        # The audit admin offers our tenants and tools as its choices (audit imports nothing
        # from mcpauth: it asks the providers registered here).
        from audit import choices

        choices.register(tenants=_tenant_choices, tools=_tool_names, tenant_exists=_tenant_exists)
