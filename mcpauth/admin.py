"""Admin for tenants and scope mappings (client bindings, client policies and tenant aliases:
:mod:`mcpauth.admin_clients`; what they share: :mod:`mcpauth.admin_base`).

Every change made here is audited (``config/<object>.<action>``, actor = the staff username)
in the transaction of the change itself, through :mod:`audit.changes`. Each page links to the
audit rows it governs: a tenant to its calls, bindings and policies; a client's binding or
policy to that client's calls; a scope mapping shows the tools it unlocks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import Permission
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from audit.display import visible
from audit.models import AuditEvent
from mcpauth import admin_clients  # noqa: F401  (registers the client and alias admins)
from mcpauth.admin_base import AuditedAdmin, IssuerFormMixin, audit_url, perm_name
from mcpauth.admin_clients import ClientBindingAdmin, ClientPolicyAdmin, TenantAliasAdmin
from mcpauth.admin_owned import TenantOwnedAdmin
from mcpauth.models import ClientBinding, ClientPolicy, ScopeMapping, Tenant, TenantAlias
from mcpauth.runtime.registry import registry

__all__ = [
    "ClientBindingAdmin",
    "ClientPolicyAdmin",
    "ScopeMappingAdmin",
    "TenantAdmin",
    "TenantAliasAdmin",
    "TenantOwnedAdmin",
]


def tenant_audit_url(tenant: Tenant, **more: str) -> str:
    """The audit changelist filtered to a tenant's rows (:meth:`Tenant.audit_rows`)."""
    issuers = ",".join(tenant.audit_issuers())
    return audit_url(tenant=tenant.external_id, **more, issuer__in=issuers)


def _tenant_rows() -> QuerySet[AuditEvent]:
    """Audit rows of the outer query's tenant, as :meth:`Tenant.audit_rows` selects them."""
    via = Q(issuer__in=TenantAlias.objects.filter(tenant=OuterRef(OuterRef("pk"))).values("issuer"))
    via |= Q(
        issuer__in=ClientBinding.objects.filter(tenant=OuterRef(OuterRef("pk"))).values("issuer")
    )
    return AuditEvent.objects.filter(
        Q(issuer=OuterRef("issuer")) | Q(issuer="") | via, tenant=OuterRef("external_id")
    ).order_by()


# --- tenants -------------------------------------------------------------------------------------


class TenantForm(IssuerFormMixin):
    class Meta:
        model = Tenant
        fields = ("issuer", "external_id", "name", "suspended")


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin):
    form = TenantForm
    list_display = (
        "external_id_column",
        "issuer_column",
        "name_column",
        "status",
        "last_seen",
        "calls_24h",
        "bindings",
        "created_at",
    )
    list_filter = ("suspended", "issuer")
    search_fields = ("external_id", "name", "issuer")
    actions = ["suspend", "unsuspend"]
    readonly_fields = ("activity",)
    audit_fields = ("issuer", "external_id", "name", "suspended")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        rows = _tenant_rows()
        since = timezone.now() - timedelta(hours=24)
        return (
            super()
            .get_queryset(request)
            .annotate(
                # Both are index look-ups on (tenant, created_at): no scan per tenant.
                last_seen_at=Subquery(rows.order_by("-created_at").values("created_at")[:1]),
                calls_last_24h=Subquery(
                    rows.filter(created_at__gte=since)
                    .values("tenant")
                    .annotate(n=Count("id"))
                    .values("n"),
                    output_field=IntegerField(),
                ),
                binding_count=Count("client_bindings", distinct=True),
            )
            .prefetch_related("aliases", "client_bindings")  # audit_issuers() of each row
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.has_audit_rows():
            # named by audit rows: immutable (Tenant.clean)
            fields[:0] = ["issuer", "external_id"]
        return fields

    def audit_action(self, before: dict[str, Any], after: dict[str, Any], change: bool) -> str:
        if change and before.get("suspended") != after.get("suspended"):
            return "suspend" if after.get("suspended") else "unsuspend"
        return super().audit_action(before, after, change)

    def audit_target(self, obj: Tenant) -> str:
        return obj.external_id

    def audit_context(self, obj: Tenant) -> dict[str, str]:
        return {"tenant": obj.external_id, "issuer": obj.issuer}

    @admin.display(description="external id", ordering="external_id")
    def external_id_column(self, obj: Tenant) -> SafeString:
        return visible(obj.external_id)

    @admin.display(description="issuer", ordering="issuer")
    def issuer_column(self, obj: Tenant) -> SafeString:
        return visible(obj.issuer)

    @admin.display(description="name", ordering="name")
    def name_column(self, obj: Tenant) -> SafeString:
        return visible(obj.name) if obj.name else format_html("{}", self.get_empty_value_display())

    @admin.display(description="status", ordering="suspended")
    def status(self, obj: Tenant) -> SafeString:
        kind, label = ("bad", "suspended") if obj.suspended else ("ok", "active")
        return format_html('<span class="mcp-badge mcp-badge-{}">{}</span>', kind, label)

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, obj: Any) -> str:
        value = getattr(obj, "last_seen_at", None)
        if value is None:
            return "never"
        return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"

    @admin.display(description="calls (24 h)", ordering="calls_last_24h")
    def calls_24h(self, obj: Any) -> SafeString:
        since = timezone.localtime(timezone.now() - timedelta(hours=24)).isoformat()
        return format_html(
            '<a href="{}">{}</a>',
            tenant_audit_url(obj, created_at__gte=since),
            getattr(obj, "calls_last_24h", None) or 0,
        )

    @admin.display(description="bindings", ordering="binding_count")
    def bindings(self, obj: Any) -> SafeString:
        url = reverse("admin:mcpauth_clientbinding_changelist")
        return format_html(
            '<a href="{}?tenant__id__exact={}">{}</a>', url, obj.pk, obj.binding_count
        )

    @admin.display(description="activity")
    def activity(self, obj: Tenant) -> SafeString:
        if obj.pk is None:
            return format_html("{}", "(none yet)")
        now = timezone.now()
        links = []
        rows = obj.audit_rows()
        for label, hours in (("24 h", 24), ("7 d", 24 * 7), ("30 d", 24 * 30)):
            since = now - timedelta(hours=hours)
            count = AuditEvent.objects.filter(rows, created_at__gte=since).count()
            links.append(
                (
                    tenant_audit_url(obj, created_at__gte=since.isoformat()),
                    f"{count} call(s) in the last {label}",
                )
            )
        links.append((tenant_audit_url(obj), "all audit rows"))
        aliases = reverse("admin:mcpauth_tenantalias_changelist")
        links.append((f"{aliases}?tenant__id__exact={obj.pk}", f"{obj.aliases.count()} alias(es)"))
        bound = list(ClientBinding.objects.filter(tenant=obj).values_list("issuer", "client_id"))
        clients = sorted({client for _issuer, client in bound})
        bindings = reverse("admin:mcpauth_clientbinding_changelist")
        links.append((f"{bindings}?tenant__id__exact={obj.pk}", f"{len(bound)} binding(s)"))
        policies = reverse("admin:mcpauth_clientpolicy_changelist")
        same_client = Q(pk__in=[])
        for issuer, client in bound:
            same_client |= Q(issuer=issuer, client_id=client)
        n_policies = ClientPolicy.objects.filter(same_client).count()
        links.append(
            (
                f"{policies}?{urlencode({'client_id__in': ','.join(clients)})}",
                f"{n_policies} policy(ies) of bound clients",
            )
        )
        last = (
            AuditEvent.objects.filter(rows)
            .order_by("-created_at")
            .values_list("created_at", flat=True)
            .first()
        )
        seen = f"{timezone.localtime(last):%Y-%m-%d %H:%M:%S %Z}" if last else "never"
        items = format_html_join("", '<li><a href="{}">{}</a></li>', links)
        return format_html('<p>Last seen: {}</p><ul class="mcp-links">{}</ul>', seen, items)

    def _set_suspended(self, request: HttpRequest, queryset: QuerySet[Tenant], value: bool) -> None:
        changed = 0
        pks = list(queryset.values_list("pk", flat=True))  # the changelist's annotated set
        with transaction.atomic():
            for tenant in Tenant.objects.filter(pk__in=pks).select_for_update():
                if tenant.suspended == value:
                    continue
                tenant.suspended = value
                tenant.save(update_fields=["suspended"])
                self._record(
                    request,
                    tenant,
                    "suspend" if value else "unsuspend",
                    {"suspended": [not value, value]},
                )
                changed += 1
        verb = "suspended" if value else "unsuspended"
        self.message_user(request, f"{changed} tenant(s) {verb}.", messages.SUCCESS)

    @admin.action(description="Suspend selected tenants (403 on every call)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._set_suspended(request, queryset, True)

    @admin.action(description="Lift suspension of selected tenants")
    def unsuspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._set_suspended(request, queryset, False)


# --- scope mappings ----------------------------------------------------------------------------


def governed_permissions() -> Q:
    """The permissions some registered tool requires (``Q`` over ``Permission``)."""
    query = Q(pk__in=[])
    for name in registry.permissions_in_use():
        app_label, _, codename = name.partition(".")
        query |= Q(content_type__app_label=app_label, codename=codename)
    return query


class ScopeMappingForm(forms.ModelForm):
    class Meta:
        model = ScopeMapping
        fields = ("scope", "description", "permissions")
        help_texts = {
            "permissions": "Only the permissions that some governed MCP tool requires are offered.",
        }


@admin.register(ScopeMapping)
class ScopeMappingAdmin(AuditedAdmin):
    form = ScopeMappingForm
    list_display = ("scope", "description", "permission_list", "unlocks")
    search_fields = ("scope", "description")
    filter_horizontal = ("permissions",)
    readonly_fields = ("unlocks",)
    audit_fields = ("scope", "description", "permissions")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScopeMapping]:
        return super().get_queryset(request).prefetch_related("permissions__content_type")

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        allowed = governed_permissions()
        if obj is not None and obj.pk is not None:
            allowed |= Q(pk__in=obj.permissions.values("pk"))  # never drop what it has
        field = form.base_fields["permissions"]
        field.queryset = (  # type: ignore[attr-defined]
            Permission.objects.filter(allowed)
            .select_related("content_type")
            .order_by("content_type__app_label", "codename")
        )
        return form

    def audit_snapshot(self, obj: Any) -> dict[str, Any]:
        return {
            "scope": obj.scope,
            "description": obj.description,
            "permissions": sorted(perm_name(p) for p in obj.permissions.all())
            if obj.pk is not None
            else [],
        }

    def audit_target(self, obj: ScopeMapping) -> str:
        return obj.scope

    @admin.display(description="permissions")
    def permission_list(self, obj: ScopeMapping) -> str:
        return ", ".join(sorted(perm_name(p) for p in obj.permissions.all()))

    @admin.display(description="unlocks tools")
    def unlocks(self, obj: ScopeMapping) -> str | SafeString:
        if obj.pk is None:
            return "(save first)"
        tools = registry.tools_needing(perm_name(p) for p in obj.permissions.all())
        return format_html_join(", ", "{}", ((visible(t),) for t in tools)) or "no tool on its own"


# Stored downstream secrets: write-only (mcpauth.downstream.admin registers itself).
from mcpauth.downstream import admin as _downstream_admin  # noqa: E402, F401
