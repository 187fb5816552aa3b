"""``/admin/audit/overview/``: the ``Overview`` proxy's changelist is the overview page.

The audit view permission (``audit.view_auditevent``) is enough to see it; it adds, changes
and deletes nothing. The figures come from :mod:`audit.overview`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from audit import choices, overview, sealing
from audit.models import Overview as OverviewProxy


def _when(value: Any) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"


def _changelist_url(**filters: str) -> str:
    return f"{reverse('admin:audit_auditevent_changelist')}?{urlencode(filters)}"


@admin.register(OverviewProxy)
class OverviewAdmin(admin.ModelAdmin):
    """``/admin/audit/overview/``: the audit view permission is enough."""

    class Media:
        css = {"all": ("audit/admin.css",)}

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm("audit.view_auditevent"))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view(self.changelist_view)
        return [path("", view, name="{}_{}_changelist".format(*info))]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        window, errors = overview.window_from(request.GET)
        figures = overview.build(window)
        config_url = f"{reverse('admin:audit_auditevent_changelist')}?" + urlencode(
            [
                ("created_at__gte", window.start.isoformat()),
                ("created_at__lt", window.end.isoformat()),
                *sorted(window.narrowing().items()),
                ("kind", "config"),
            ]
        )
        seal = sealing.status()
        unsealed_url = _changelist_url(id__gt=str(seal["last_sealed_id"] or 0))
        context = {
            **self.admin_site.each_context(request),
            "title": "Audit overview",
            "opts": self.opts,
            "media": self.media,
            "window": window,
            "errors": errors,
            "ov": figures,
            "presets": list(overview.PRESETS),
            "tenants": overview.tenant_choices(),
            "tools": choices.tools(),
            "form_start": timezone.localtime(window.start).strftime("%Y-%m-%dT%H:%M"),
            "form_end": timezone.localtime(window.end).strftime("%Y-%m-%dT%H:%M"),
            "start_text": _when(window.start),
            "end_text": _when(window.end),
            "config_url": config_url,
            "seal": seal,
            "unsealed_url": unsealed_url,
            "changelist_url": reverse("admin:audit_auditevent_changelist"),
            "all_calls_url": overview.changelist_url(window),
            "known_tenant": window.tenant is None or choices.tenant_exists(window.tenant),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/audit/overview.html", context)
