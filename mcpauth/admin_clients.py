"""Admin for client bindings, client policies and tenant aliases (issuer-namespaced)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from audit.display import visible
from mcpauth.admin_base import AuditedAdmin, ClientCallsMixin, IssuerFormMixin
from mcpauth.admin_owned import TenantListFilter
from mcpauth.models import ClientBinding, ClientPolicy, TenantAlias

# --- clients -------------------------------------------------------------------------------------


class ClientBindingForm(IssuerFormMixin):
    class Meta:
        model = ClientBinding
        fields = ("issuer", "client_id", "tenant")


@admin.register(ClientBinding)
class ClientBindingAdmin(ClientCallsMixin, AuditedAdmin):
    form = ClientBindingForm
    list_display = ("client_id_column", "issuer_column", "tenant_column", "created_at", "calls")
    list_filter = ("issuer", ("tenant", TenantListFilter))
    search_fields = ("client_id", "tenant__external_id")
    autocomplete_fields = ("tenant",)
    readonly_fields = ("calls",)
    audit_fields = ("issuer", "client_id", "tenant")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ClientBinding]:
        return super().get_queryset(request).select_related("tenant")

    @admin.display(description="tenant", ordering="tenant__external_id")
    def tenant_column(self, obj: ClientBinding) -> SafeString:
        return visible(obj.tenant.label)

    def audit_target(self, obj: ClientBinding) -> str:
        return obj.client_id

    def audit_snapshot(self, obj: Any) -> dict[str, Any]:
        return {
            "issuer": obj.issuer,
            "client_id": obj.client_id,
            "tenant": obj.tenant.external_id if obj.tenant_id else "",
            "tenant_issuer": obj.tenant.issuer if obj.tenant_id else "",
        }

    def audit_context(self, obj: ClientBinding) -> dict[str, str]:
        return {"client_id": obj.client_id, "tenant": obj.tenant.external_id, "issuer": obj.issuer}


class ClientPolicyForm(IssuerFormMixin):
    class Meta:
        model = ClientPolicy
        fields = ("issuer", "client_id", "mode", "rate", "note")


@admin.register(ClientPolicy)
class ClientPolicyAdmin(ClientCallsMixin, AuditedAdmin):
    form = ClientPolicyForm
    list_display = (
        "client_id_column",
        "issuer_column",
        "mode",
        "rate",
        "note",
        "updated_at",
        "calls",
    )
    list_filter = ("mode", "issuer")
    search_fields = ("client_id",)
    readonly_fields = ("calls",)
    audit_fields = ("issuer", "client_id", "mode", "rate", "note")

    def audit_target(self, obj: ClientPolicy) -> str:
        return obj.client_id

    def audit_context(self, obj: ClientPolicy) -> dict[str, str]:
        return {"client_id": obj.client_id, "issuer": obj.issuer}


# --- tenant aliases ------------------------------------------------------------------------------


class TenantAliasForm(IssuerFormMixin):
    class Meta:
        model = TenantAlias
        fields = ("issuer", "external_id", "tenant", "note")


@admin.register(TenantAlias)
class TenantAliasAdmin(AuditedAdmin):
    """An operator's explicit join of another issuer's tenant claim value to a tenant."""

    form = TenantAliasForm
    list_display = ("external_id_column", "issuer_column", "tenant_label", "note", "created_at")
    list_filter = ("issuer", ("tenant", TenantListFilter))
    search_fields = ("external_id", "tenant__external_id", "note")
    autocomplete_fields = ("tenant",)
    audit_fields = ("issuer", "external_id", "tenant", "note")

    def get_queryset(self, request: HttpRequest) -> QuerySet[TenantAlias]:
        return super().get_queryset(request).select_related("tenant")

    @admin.display(description="tenant", ordering="tenant__external_id")
    def tenant_label(self, obj: TenantAlias) -> SafeString:
        return visible(obj.tenant_label)

    @admin.display(description="external id", ordering="external_id")
    def external_id_column(self, obj: TenantAlias) -> SafeString:
        return visible(obj.external_id)

    @admin.display(description="issuer", ordering="issuer")
    def issuer_column(self, obj: TenantAlias) -> SafeString:
        return visible(obj.issuer)

    def audit_target(self, obj: TenantAlias) -> str:
        return f"{obj.external_id} ({obj.issuer})"

    def audit_snapshot(self, obj: Any) -> dict[str, Any]:
        return {
            "issuer": obj.issuer,
            "external_id": obj.external_id,
            "tenant": obj.tenant.external_id if obj.tenant_id else "",
            "tenant_issuer": obj.tenant.issuer if obj.tenant_id else "",
            "note": obj.note,
        }

    def audit_context(self, obj: TenantAlias) -> dict[str, str]:
        # the row is found under the tenant the alias leads into, and the alias's issuer
        return {"tenant": obj.tenant.external_id, "issuer": obj.issuer}
