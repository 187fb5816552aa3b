"""The admin for stored downstream secrets: write-only.

The form has a password field that is never filled in (``render_value=False``): a secret is set
or replaced, never shown; no page, list or export shows it or its ciphertext. A secret is bound
to its downstream and tenant, so those are fixed once it exists (replace it, or delete it and
add another). Every change is audited as ``config/downstream_secret.<action>`` (``create``,
``rotate``, ``delete``) with the version and key id, never the value.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from mcpauth.admin_base import AuditedAdmin
from mcpauth.downstream.conf import get_settings
from mcpauth.downstream.models import DownstreamSecret, secret_problem


def _choices(current: str = "") -> list[tuple[str, str]]:
    declared = get_settings().downstreams
    names = sorted(n for n, d in declared.items() if d.stores_secret)
    if current and current not in names:
        names.insert(0, current)
    return [(n, f"{n} ({declared[n].kind})" if n in declared else n) for n in names]


class DownstreamSecretForm(forms.ModelForm):
    secret = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: it is stored encrypted and never shown again. On an existing "
        "secret, leave empty to keep it, or enter a new one to rotate it (the next tool call "
        "uses it).",
    )

    class Meta:
        model = DownstreamSecret
        fields = ("downstream", "tenant")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "downstream" in self.fields:
            self.fields["downstream"] = forms.ChoiceField(
                choices=_choices(self.instance.downstream or ""),
                help_text="A downstream declared in MCPAUTH_DOWNSTREAMS that keeps its secret "
                "here.",
            )

    def clean_secret(self) -> str:
        value: str = self.cleaned_data.get("secret") or ""
        if not value:
            if self.instance.pk is None:
                raise ValidationError("Enter the secret.")
            return ""
        problem = secret_problem(value)
        if problem:
            raise ValidationError(problem)
        return value

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]  # ModelForm's hook (not in the stubs)
        secret = self.cleaned_data.get("secret")
        if secret and not self.errors:
            try:
                self.instance.set_secret(secret)
            except ValidationError as exc:
                self.add_error("secret", exc.messages)


@admin.register(DownstreamSecret)
class DownstreamSecretAdmin(AuditedAdmin):
    form = DownstreamSecretForm
    list_display = ("downstream", "tenant_name", "kind", "version", "key_id", "updated_at")
    list_filter = ("downstream",)
    search_fields = ("downstream", "tenant__external_id")
    autocomplete_fields = ("tenant",)
    actions = None

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        # bound to them (encryption associated data): fixed once the secret exists
        return ("downstream", "tenant", "version", "key_id", "updated_at")

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("tenant")

    @admin.display(description="tenant", ordering="tenant__external_id")
    def tenant_name(self, obj: DownstreamSecret) -> str:
        return obj.tenant.external_id if obj.tenant_id and obj.tenant else "(every tenant)"

    @admin.display(description="auth")
    def kind(self, obj: DownstreamSecret) -> str:
        declared = get_settings().downstreams.get(obj.downstream)
        return declared.kind if declared is not None else "(not declared)"

    def audit_snapshot(self, obj: Any) -> dict[str, Any]:
        return obj.audit_values() if obj is not None and obj.pk is not None else {}

    def audit_action(self, before: dict[str, Any], after: dict[str, Any], change: bool) -> str:
        if change and before.get("version") != after.get("version"):
            return "rotate"
        return super().audit_action(before, after, change)

    def audit_target(self, obj: DownstreamSecret) -> str:
        return str(obj)

    def audit_context(self, obj: DownstreamSecret) -> dict[str, str]:
        return {"tenant": obj.tenant.external_id} if obj.tenant_id and obj.tenant else {}
