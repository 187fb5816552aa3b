"""Admin for tenants, scope mappings, client bindings and client policies.

Every change made here is audited (``config/<object>.<action>``, actor = the staff username)
in the transaction of the change itself, through :mod:`audit.config`. Each page links to the
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

from audit.config import diff, record_change, request_actor
from audit.models import AuditEvent
from mcpauth.models import ClientBinding, ClientPolicy, ScopeMapping, Tenant
from mcpauth.registry import registry


def audit_url(**filters: str) -> str:
    """The audit changelist filtered by ``filters`` (``tenant=…``, ``client_id=…``)."""
    return f"{reverse('admin:audit_auditevent_changelist')}?{urlencode(filters)}"


def _perm_name(perm: Permission) -> str:
    return f"{perm.content_type.app_label}.{perm.codename}"


class AuditedAdmin(admin.ModelAdmin):
    """Audits every add, change and delete as ``config/<object>.<action>``."""

    class Media:
        css = {"all": ("audit/admin.css",)}

    #: The fields whose values an audit row records.
    audit_fields: tuple[str, ...] = ()

    def audit_snapshot(self, obj: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in self.audit_fields:
            value = getattr(obj, name)
            values[name] = str(value) if hasattr(value, "_meta") else value
        return values

    def audit_action(self, before: dict[str, Any], after: dict[str, Any], change: bool) -> str:
        return "update" if change else "create"

    def audit_target(self, obj: Any) -> str:
        return str(obj)

    def audit_context(self, obj: Any) -> dict[str, str]:
        """``tenant``/``client_id`` columns for the audit row, so filters find it."""
        return {}

    def _record(self, request: HttpRequest, obj: Any, action: str, changes: dict[str, Any]) -> None:
        record_change(
            obj,
            action,
            target=self.audit_target(obj),
            actor=request_actor(request),
            changes=changes,
            request=request,
            **self.audit_context(obj),
        )

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = {}
        if change:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = self.audit_snapshot(stored) if stored is not None else {}
        super().save_model(request, obj, form, change)
        request._audit_before = before  # type: ignore[attr-defined]  # read by save_related

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        obj = form.instance
        before: dict[str, Any] = getattr(request, "_audit_before", {})
        after = self.audit_snapshot(obj)
        changes = diff(before, after)
        if change and not changes:
            return
        self._record(request, obj, self.audit_action(before, after, change), changes)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            self._record(request, obj, "delete", diff(self.audit_snapshot(obj), {}))
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                self._record(request, obj, "delete", diff(self.audit_snapshot(obj), {}))
            super().delete_queryset(request, queryset)


# --- tenants -------------------------------------------------------------------------------------


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin):
    list_display = (
        "external_id",
        "name",
        "status",
        "last_seen",
        "calls_24h",
        "bindings",
        "created_at",
    )
    list_filter = ("suspended",)
    search_fields = ("external_id", "name")
    actions = ["suspend", "unsuspend"]
    readonly_fields = ("activity",)
    audit_fields = ("external_id", "name", "suspended")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        rows = AuditEvent.objects.filter(tenant=OuterRef("external_id")).order_by()
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
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.has_audit_rows():
            fields.insert(0, "external_id")  # named by audit rows: immutable (Tenant.clean)
        return fields

    def audit_action(self, before: dict[str, Any], after: dict[str, Any], change: bool) -> str:
        if change and before.get("suspended") != after.get("suspended"):
            return "suspend" if after.get("suspended") else "unsuspend"
        return super().audit_action(before, after, change)

    def audit_target(self, obj: Tenant) -> str:
        return obj.external_id

    def audit_context(self, obj: Tenant) -> dict[str, str]:
        return {"tenant": obj.external_id}

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
            audit_url(tenant=obj.external_id, created_at__gte=since),
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
        for label, hours in (("24 h", 24), ("7 d", 24 * 7), ("30 d", 24 * 30)):
            since = now - timedelta(hours=hours)
            count = AuditEvent.objects.filter(tenant=obj.external_id, created_at__gte=since).count()
            links.append(
                (
                    audit_url(tenant=obj.external_id, created_at__gte=since.isoformat()),
                    f"{count} call(s) in the last {label}",
                )
            )
        links.append((audit_url(tenant=obj.external_id), "all audit rows"))
        clients = list(ClientBinding.objects.filter(tenant=obj).values_list("client_id", flat=True))
        bindings = reverse("admin:mcpauth_clientbinding_changelist")
        links.append((f"{bindings}?tenant__id__exact={obj.pk}", f"{len(clients)} binding(s)"))
        policies = reverse("admin:mcpauth_clientpolicy_changelist")
        n_policies = ClientPolicy.objects.filter(client_id__in=clients).count()
        links.append(
            (
                f"{policies}?{urlencode({'client_id__in': ','.join(clients)})}",
                f"{n_policies} policy(ies) of bound clients",
            )
        )
        last = (
            AuditEvent.objects.filter(tenant=obj.external_id)
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
            "permissions": sorted(_perm_name(p) for p in obj.permissions.all())
            if obj.pk is not None
            else [],
        }

    def audit_target(self, obj: ScopeMapping) -> str:
        return obj.scope

    @admin.display(description="permissions")
    def permission_list(self, obj: ScopeMapping) -> str:
        return ", ".join(sorted(_perm_name(p) for p in obj.permissions.all()))

    @admin.display(description="unlocks tools")
    def unlocks(self, obj: ScopeMapping) -> str:
        if obj.pk is None:
            return "(save first)"
        tools = registry.tools_needing(_perm_name(p) for p in obj.permissions.all())
        return ", ".join(tools) or "no tool on its own"


# --- clients -------------------------------------------------------------------------------------


class ClientCallsMixin:
    """A link from a client's binding or policy to that client's audit rows."""

    @admin.display(description="calls")
    def calls(self, obj: Any) -> SafeString:
        if obj is None or not obj.client_id:
            return format_html("{}", "(none yet)")
        return format_html(
            '<a href="{}">audit rows of {}</a>', audit_url(client_id=obj.client_id), obj.client_id
        )


@admin.register(ClientBinding)
class ClientBindingAdmin(ClientCallsMixin, AuditedAdmin):
    list_display = ("client_id", "tenant", "created_at", "calls")
    list_filter = ("tenant",)
    search_fields = ("client_id", "tenant__external_id")
    autocomplete_fields = ("tenant",)
    readonly_fields = ("calls",)
    audit_fields = ("client_id", "tenant")

    def audit_target(self, obj: ClientBinding) -> str:
        return obj.client_id

    def audit_snapshot(self, obj: Any) -> dict[str, Any]:
        return {
            "client_id": obj.client_id,
            "tenant": obj.tenant.external_id if obj.tenant_id else "",
        }

    def audit_context(self, obj: ClientBinding) -> dict[str, str]:
        return {"client_id": obj.client_id, "tenant": obj.tenant.external_id}


@admin.register(ClientPolicy)
class ClientPolicyAdmin(ClientCallsMixin, AuditedAdmin):
    list_display = ("client_id", "mode", "rate", "note", "updated_at", "calls")
    list_filter = ("mode",)
    search_fields = ("client_id",)
    readonly_fields = ("calls",)
    audit_fields = ("client_id", "mode", "rate", "note")

    def audit_target(self, obj: ClientPolicy) -> str:
        return obj.client_id

    def audit_context(self, obj: ClientPolicy) -> dict[str, str]:
        return {"client_id": obj.client_id}


# Stored downstream secrets: write-only (mcpauth.downstream.admin registers itself).
from mcpauth.downstream import admin as _downstream_admin  # noqa: E402, F401
