"""The admin of :class:`~mcpauth.models.TenantOwned` models: audited with the row's tenant.

A domain app's model admin inherits :class:`TenantOwnedAdmin` and gets, with nothing else to
write:

* every add, change, delete, ``delete_selected`` and custom action audited as
  ``data/<app_label>.<model_name>.<action>`` rows (:class:`audit.admin_mixins.AuditedModelAdmin`)
  whose ``tenant`` column is the row's tenant. A row moved to another tenant is named in both
  tenants' trails: two rows (one per tenant, same ``request_id``), each with ``moved_from`` and
  ``moved_to`` (external ids);
* the tenant shown so that look-alikes cannot pass for each other (:mod:`audit.display`): the
  ``tenant`` column of ``list_display``, the ``tenant`` entry of ``list_filter`` and the tenant
  choices of the form read ``name (external_id)`` with non-ASCII characters escaped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import ForeignKey
from django.http import HttpRequest
from django.utils.safestring import SafeString

from audit.admin_mixins import AuditedModelAdmin, Snapshot
from audit.display import visible, visible_text
from mcpauth.models import Tenant

TENANT_FIELD = "tenant"


def tenant_label(tenant: Tenant) -> str:
    """``Acme Corp (acme)``, or the external id alone when the tenant has no other name."""
    if tenant.name and tenant.name != tenant.external_id:
        return f"{tenant.name} ({tenant.external_id})"
    return tenant.external_id


class TenantListFilter(admin.RelatedFieldListFilter):
    """Filter by tenant: ``name (external_id)``, look-alike characters escaped and marked."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        ordering = self.field_admin_ordering(field, request, model_admin) or ["external_id"]
        tenants = Tenant.objects.order_by(*ordering).only("pk", "external_id", "name")
        return [(t.pk, visible(tenant_label(t))) for t in tenants]


class TenantChoiceField(forms.ModelChoiceField):  # type: ignore[type-arg]
    """Tenants in a ``<select>`` (text only): ``name (external_id)``, non-ASCII escaped."""

    def label_from_instance(self, obj: Any) -> str:
        return visible_text(tenant_label(obj))


class TenantOwnedAdmin(AuditedModelAdmin):
    """Admin for a ``TenantOwned`` model (see the module docstring)."""

    # --- audit -----------------------------------------------------------------------------------

    def _tenant_ids(self, request: HttpRequest, ids: Iterable[Any]) -> dict[Any, str]:
        """``{tenant pk: external_id}``, looked up once per request."""
        known: dict[Any, str] = request.__dict__.setdefault("_audit_tenant_ids", {})
        missing = {i for i in ids if i is not None and i not in known}
        if missing:
            known.update(Tenant.objects.filter(pk__in=missing).values_list("pk", "external_id"))
        return known

    def _tenants(self, request: HttpRequest, before: Snapshot, after: Snapshot) -> tuple[str, str]:
        attname = self.model._meta.get_field(TENANT_FIELD).attname
        old, new = before.get(attname), after.get(attname)
        names = self._tenant_ids(request, (old, new))
        return names.get(old, ""), names.get(new, "")

    def audit_columns(
        self, request: HttpRequest, before: Snapshot, after: Snapshot
    ) -> list[dict[str, str]]:
        old, new = self._tenants(request, before, after)
        if before and after and old != new:
            return [{"tenant": old}, {"tenant": new}]
        return [{"tenant": new if after else old}]

    def audit_details(
        self, request: HttpRequest, before: Snapshot, after: Snapshot
    ) -> dict[str, Any]:
        old, new = self._tenants(request, before, after)
        if before and after and old != new:
            return {"moved_from": old, "moved_to": new}
        return {}

    # --- the tenant, shown visibly ---------------------------------------------------------------

    @admin.display(description="tenant", ordering="tenant__external_id")
    def tenant_column(self, obj: Any) -> SafeString:
        return visible(tenant_label(obj.tenant))

    def get_list_display(self, request: HttpRequest) -> Any:
        return [
            "tenant_column" if name == TENANT_FIELD else name
            for name in super().get_list_display(request)
        ]

    def get_list_filter(self, request: HttpRequest) -> Any:
        return [
            (TENANT_FIELD, TenantListFilter) if name == TENANT_FIELD else name
            for name in super().get_list_filter(request)
        ]

    def formfield_for_foreignkey(
        self, db_field: ForeignKey[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> Any:
        if db_field.name == TENANT_FIELD:
            kwargs.setdefault("form_class", TenantChoiceField)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
