"""Where the audit admin's tenant and tool choices come from.

``audit`` sits below the apps that call it and imports none of them, yet its filters and its
overview offer the tenants and tools those apps know. So the app that owns them registers
providers here, once, from its ``AppConfig.ready()`` (``mcpauth`` does: its tenant table and
its tool registry)::

    from audit import choices

    choices.register(tenants=my_tenants, tools=my_tool_names, tenant_exists=my_tenant_exists)

Without a provider the choices are what the most recent audit rows name (a bounded query, never
a scan of the whole table), and every tenant counts as known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: How many of the newest rows the fallback choices look at.
RECENT_ROWS = 5000

#: ``tenants(limit)`` → ``[(external_id, name), ...]``, sorted by external id.
TenantsProvider = Callable[[int], list[tuple[str, str]]]
#: ``tools()`` → the names of the tools that exist, sorted.
ToolsProvider = Callable[[], list[str]]
#: ``tenant_exists(external_id)`` → whether that tenant exists.
TenantExists = Callable[[str], bool]


@dataclass
class _Providers:
    tenants: TenantsProvider | None = None
    tools: ToolsProvider | None = None
    tenant_exists: TenantExists | None = None


_providers = _Providers()


def register(
    *,
    tenants: TenantsProvider | None = None,
    tools: ToolsProvider | None = None,
    tenant_exists: TenantExists | None = None,
) -> None:
    """Install providers (each one given replaces the one before; ``None`` keeps it)."""
    if tenants is not None:
        _providers.tenants = tenants
    if tools is not None:
        _providers.tools = tools
    if tenant_exists is not None:
        _providers.tenant_exists = tenant_exists


def reset() -> None:
    """Forget every provider (tests)."""
    _providers.tenants = _providers.tools = _providers.tenant_exists = None


def _recent(field_name: str, limit: int) -> list[str]:
    from audit.models import AuditEvent

    recent = AuditEvent.objects.order_by("-created_at", "-id").values("pk")[:RECENT_ROWS]
    values = (
        AuditEvent.objects.filter(pk__in=recent)
        .exclude(**{field_name: ""})
        .order_by(field_name)
        .values_list(field_name, flat=True)
        .distinct()
    )
    return list(values[:limit])


def tenants(limit: int = 500) -> list[tuple[str, str]]:
    """Up to ``limit`` tenants as ``(external_id, name)``, by external id."""
    if _providers.tenants is not None:
        return list(_providers.tenants(limit))[:limit]
    return [(external_id, "") for external_id in _recent("tenant", limit)]


def tools() -> list[str]:
    """The names of the tools, sorted."""
    if _providers.tools is not None:
        return list(_providers.tools())
    return _recent("tool", 500)


def tenant_exists(external_id: str) -> bool:
    """Whether the tenant ``external_id`` exists (``True`` when no provider can tell)."""
    if _providers.tenant_exists is not None:
        return bool(_providers.tenant_exists(external_id))
    return True
