"""What the mcpauth admin pages share: configuration changes audited in their transaction
(:class:`AuditedAdmin`), links to the audit rows they govern, and the issuer choice."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from audit.admin_mixins import VisibleNamesMixin, cascade
from audit.changes import diff, record_change, request_actor
from audit.display import visible
from mcpauth.conf import get_settings


def audit_url(**filters: str) -> str:
    """The audit changelist filtered by ``filters`` (``tenant=…``, ``client_id=…``)."""
    return f"{reverse('admin:audit_auditevent_changelist')}?{urlencode(filters)}"


def issuer_choices(current: str = "") -> list[tuple[str, str]]:
    """The configured issuers (and ``current``, kept when no longer configured)."""
    issuers = [cfg.issuer for cfg in get_settings().issuer_configs]
    if current and current not in issuers:
        issuers.append(current)
    return [(i, i) for i in issuers]


class IssuerFormMixin(forms.ModelForm):
    """``issuer`` as a choice of the configured issuers (the only ones tokens can come from);
    left out, it is the first configured issuer (the only one of a single-issuer deployment)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields.get("issuer")
        if field is not None:
            current = self.instance.issuer if self.instance.pk else ""
            self.fields["issuer"] = forms.ChoiceField(
                choices=[("", "(the first configured issuer)"), *issuer_choices(current)],
                initial=current or get_settings().default_issuer,
                required=False,
                help_text=field.help_text,
            )

    def clean_issuer(self) -> str:
        value = str(self.cleaned_data.get("issuer") or "")
        return (
            value
            or (self.instance.issuer if self.instance.pk else "")
            or (get_settings().default_issuer)
        )


def perm_name(perm: Permission) -> str:
    return f"{perm.content_type.app_label}.{perm.codename}"


class AuditedAdmin(VisibleNamesMixin):
    """Audits every add, change and delete as ``config/<object>.<action>``."""

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
        """``tenant``/``client_id``/``issuer`` columns for the audit row, so filters find it."""
        return {}

    def _record(
        self,
        request: HttpRequest,
        obj: Any,
        action: str,
        changes: dict[str, Any],
        cascade: list[list[Any]] | None = None,
    ) -> None:
        record_change(
            obj,
            action,
            target=self.audit_target(obj),
            actor=request_actor(request),
            changes=changes,
            request=request,
            cascade=cascade,
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

    def _record_delete(self, request: HttpRequest, obj: Any) -> None:
        """Before the delete: the row names what it also deletes (a tenant's data, say)."""
        changes = diff(self.audit_snapshot(obj), {})
        self._record(request, obj, "delete", changes, cascade=cascade(obj))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            self._record_delete(request, obj)
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                self._record_delete(request, obj)
            super().delete_queryset(request, queryset)


class ClientCallsMixin:
    """A link from a client's binding or policy to that client's audit rows (its issuer's)."""

    @admin.display(description="calls")
    def calls(self, obj: Any) -> SafeString:
        if obj is None or not obj.client_id:
            return format_html("{}", "(none yet)")
        return format_html(
            '<a href="{}">audit rows of {}</a>',
            audit_url(client_id=obj.client_id, issuer=obj.issuer),
            visible(obj.client_id),
        )

    @admin.display(description="client id", ordering="client_id")
    def client_id_column(self, obj: Any) -> SafeString:
        return visible(obj.client_id)

    @admin.display(description="issuer", ordering="issuer")
    def issuer_column(self, obj: Any) -> SafeString:
        return visible(obj.issuer)
