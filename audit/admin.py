"""A read-only admin for the audit trail, built to stay fast on a table of many million rows.

* Nobody can add, change or delete rows here (retention is ``manage.py audit_prune``).
* No full scan or unfiltered ``COUNT(*)`` per page view (:mod:`audit.admin_counting`): the count
  is exact up to a limit, else PostgreSQL's planner estimate, shown as "≈"; facet counts are
  off; filter choices come from the tenant table, the tool registry and the most recent rows
  (:mod:`audit.filters`); the date drill-down is built from ``MIN``/``MAX``.
* Search is a prefix match on the indexed identifiers (request id, token id, client id,
  subject). Every identifier in the list is a link that filters by it; the active filters are
  listed, those set by URL included, with "clear all".
* "Export CSV/JSONL" streams the currently filtered rows (:mod:`audit.export`); each export is
  itself audited (``audit/export``, with the filter used).
* The overview (``/admin/audit/overview/``, :mod:`audit.overview`) is the ``Overview`` proxy's
  changelist; the audit view permission is enough to see it.
* Identifiers (tenant, client, subject, tool, method, ids, actor) are shown by
  :func:`audit.display.visible`: characters outside printable ASCII escaped and marked, so that a
  look-alike cannot pass for another; free text (reason, user agent, arguments) has its bidi and
  invisible characters shown the same way. Links and exports keep the exact stored values.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG, ORDER_VAR, PAGE_VAR, SEARCH_VAR, ChangeList
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db import connections, models
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from audit import export
from audit.admin_counting import EstimatedCountPaginator, date_hierarchy
from audit.admin_export import ExportAudit
from audit.admin_mixins import VisibleNamesMixin
from audit.display import reveal_hidden, reveal_hidden_text, visible, visible_text
from audit.filters import (
    ClientFilter,
    IssuerFilter,
    KindFilter,
    OutcomeFilter,
    TenantFilter,
    TimeRangeFilter,
    ToolFilter,
)
from audit.models import OUTBOUND_PREFIX, AuditEvent, Outcome

__all__ = ["AuditEventAdmin", "EstimatedCountPaginator", "OverviewAdmin"]

#: Rows fetched per database round trip by the admin export.
EXPORT_CHUNK_SIZE = 2000
#: Query parameters that are not filters.
NOT_FILTERS = {PAGE_VAR, ORDER_VAR, ERROR_FLAG, "_popup", "_to_field", "_facets"}
#: How active filters are named in the "Filtered by" bar.
FILTER_LABELS = {
    SEARCH_VAR: "search",
    "outcome": "outcome",
    "kind": "kind",
    "tool": "tool",
    "tenant": "tenant",
    "client_id": "client",
    "subject": "subject",
    "token_id": "token",
    "request_id": "request",
    "trace_id": "trace",
    "client_ip": "client IP",
    "method": "method",
    "actor": "actor",
    "created_at__gte": "from",
    "created_at__lt": "until",
    "id__gt": "after id",
}
KIND_LABELS = {
    "call": "MCP calls",
    "outbound": "outbound calls",
    "config": "configuration and data changes, exports",
}
#: The identifiers that search matches by prefix (each has an index that serves LIKE 'x%').
PREFIX_FIELDS = ("request_id", "token_id", "client_id", "subject")
BADGE_CLASS: dict[str, str] = {
    Outcome.OK: "ok",
    Outcome.TOOL_ERROR: "warn",
    Outcome.INVALID_REQUEST: "warn",
    Outcome.DENIED: "bad",
    Outcome.UNAUTHENTICATED: "bad",
    Outcome.RATE_LIMITED: "limit",
    Outcome.SERVER_ERROR: "bad",
    Outcome.INPUT_REQUIRED: "ok",
    Outcome.CANCELLED: "warn",
}
REASON_CHARS = 60
#: The most outbound calls listed on a call's detail page (the rest: "all rows of this request").
MAX_OUTBOUND_LISTED = 100
#: What an empty cell shows (an en dash).
NO_VALUE = "\u2013"


def changelist_url(**filters: str) -> str:
    return f"{reverse('admin:audit_auditevent_changelist')}?{urlencode(filters)}"


def _short(value: str, n: int) -> SafeString:
    """The first ``n`` characters of an identifier, shown visibly, "…" when cut."""
    if len(value) <= n:
        return visible(value)
    return format_html("{}…", visible(value[: n - 1]))


def _filter_link(field: str, value: str, n: int = 24) -> SafeString:
    if not value:
        return format_html('<span class="mcp-none">{}</span>', NO_VALUE)
    return format_html(
        '<a class="mcp-filter" href="{}" title="{}: {} (show only these rows)">{}</a>',
        changelist_url(**{field: value}),
        FILTER_LABELS.get(field, field),
        visible_text(value),
        _short(value, n),
    )


def when(value: Any) -> str:
    """Date, time with seconds, and the time zone: ``2026-12-01 19:32:05 UTC``."""
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"


def outcome_badge(outcome: str, status: int | None = None) -> SafeString:
    label = Outcome(outcome).label if outcome in Outcome.values else outcome
    kind = BADGE_CLASS.get(outcome, "warn")
    if status:
        return format_html(
            '<span class="mcp-badge mcp-badge-{}">{}</span> <span class="mcp-status">{}</span>',
            kind,
            label,
            status,
        )
    return format_html('<span class="mcp-badge mcp-badge-{}">{}</span>', kind, label)


#: Text fields of the detail page that are free text, not identifiers: only their bidi and
#: invisible characters are marked (every other text field is an identifier, fully escaped).
FREE_TEXT_FIELDS = frozenset({"error_message", "user_agent"})
#: What Django's admin shows for an empty field.
EMPTY_FIELD = "-"


@functools.cache
def shown_field(name: str) -> str | Callable[[AuditEvent], SafeString]:
    """A detail-page field: a text field becomes a callable that shows it visibly.

    The callable keeps the field's name (the row's ``field-<name>`` class) and label.
    """
    try:
        field = AuditEvent._meta.get_field(name)
    except FieldDoesNotExist:
        return name
    if not isinstance(field, models.CharField | models.TextField) or field.choices:
        return name
    render = reveal_hidden if name in FREE_TEXT_FIELDS else visible

    def show(obj: AuditEvent) -> SafeString:
        value = getattr(obj, name)
        return render(value) if value else format_html("{}", EMPTY_FIELD)

    show.__name__ = show.__qualname__ = name
    return admin.display(description=str(field.verbose_name))(show)


class AuditChangeList(ChangeList):
    @cached_property
    def audit_date_hierarchy(self) -> dict[str, Any]:
        return date_hierarchy(self) if self.date_hierarchy else {"show": False}

    @cached_property
    def active_filters(self) -> list[dict[str, str]]:
        """Every filter in the query string, with a link that removes it (and only it)."""
        active = []
        params = {k: list(v) for k, v in self.filter_params.items() if k not in NOT_FILTERS}
        for key, values in sorted(params.items()):
            for value in values:
                if key in ("created_at__gte", "created_at__lt") and not value.strip():
                    continue  # an empty field of the time form: no bound
                rest = {k: [x for x in v if (k, x) != (key, value)] for k, v in params.items()}
                rest = {k: v for k, v in rest.items() if v}
                label = FILTER_LABELS.get(key, key)
                if key == "outcome" and value in Outcome.values:
                    shown = Outcome(value).label
                elif key == "outcome" and value == "failure":
                    shown = "any failure"
                elif key == "kind" and value in KIND_LABELS:
                    shown = KIND_LABELS[value]
                else:
                    shown = value or "(none)"
                active.append(
                    {
                        "label": label,
                        "value": visible(shown),
                        "value_text": visible_text(shown),
                        "remove_url": "?" + urlencode(sorted(rest.items()), doseq=True),
                    }
                )
        return active


@admin.register(AuditEvent)
class AuditEventAdmin(VisibleNamesMixin):
    change_list_template = "admin/audit/auditevent/change_list.html"
    list_display = (
        "when_column",
        "outcome_column",
        "call_column",
        "caller_column",
        "error_code_column",
        "reason_column",
        "duration_column",
        "ids_column",
    )
    list_display_links = ("when_column",)
    list_filter = (
        OutcomeFilter,
        TimeRangeFilter,
        KindFilter,
        ToolFilter,
        TenantFilter,
        ClientFilter,
        IssuerFilter,
    )
    date_hierarchy = "created_at"
    search_fields = PREFIX_FIELDS
    search_help_text = "Start of a request id, token id, client id or subject."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 100
    actions = None
    readonly_fields = (
        "when_field",
        "outcome_field",
        "pretty_arguments",
        "related",
        "outbound_calls",
        "made_by",
    )

    class Media:
        css = {"all": ("audit/admin.css",)}

    # Append-only: rows are written by audit.recorder and removed by audit_prune only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AuditChangeList

    # --- the list ------------------------------------------------------------------------------

    @admin.display(description="time", ordering="created_at")
    def when_column(self, obj: AuditEvent) -> SafeString:
        local = timezone.localtime(obj.created_at)
        return format_html(
            '<span class="mcp-when" title="{}">{}<br>{}</span>',
            when(obj.created_at),
            f"{local:%Y-%m-%d}",
            f"{local:%H:%M:%S %Z}",
        )

    @admin.display(description="outcome", ordering="outcome")
    def outcome_column(self, obj: AuditEvent) -> SafeString:
        return outcome_badge(obj.outcome, obj.status)

    @admin.display(description="call")
    def call_column(self, obj: AuditEvent) -> SafeString:
        if obj.is_outbound:
            return format_html(
                '<span class="mcp-method" title="{}, made by {}">{}</span>',
                obj.method,
                obj.tool,
                _short(obj.method, 24),
            )
        if obj.tool:
            return format_html(
                '<span title="{} {}">{}</span>',
                visible_text(obj.method),
                visible_text(obj.tool),
                _short(obj.tool, 22),
            )
        return format_html('<span class="mcp-method">{}</span>', _short(obj.method, 24))

    @admin.display(description="tenant · client · subject")
    def caller_column(self, obj: AuditEvent) -> SafeString:
        parts = [
            _filter_link("tenant", obj.tenant),
            _filter_link("client_id", obj.client_id),
            _filter_link("subject", obj.subject),
        ]
        if obj.actor:
            parts.append(format_html('<span class="mcp-actor">by {}</span>', visible(obj.actor)))
        return format_html_join("", '<span class="mcp-line">{}</span>', ((p,) for p in parts))

    @admin.display(description="error code", ordering="error_code")
    def error_code_column(self, obj: AuditEvent) -> SafeString:
        if not obj.error_code:
            return format_html('<span class="mcp-none">{}</span>', NO_VALUE)
        return format_html('<code class="mcp-code">{}</code>', visible(obj.error_code))

    @admin.display(description="reason")
    def reason_column(self, obj: AuditEvent) -> SafeString:
        if not obj.error_message:
            return format_html('<span class="mcp-none">{}</span>', NO_VALUE)
        message = obj.error_message
        shown = (
            reveal_hidden(message)
            if len(message) <= REASON_CHARS
            else format_html("{}…", reveal_hidden(message[: REASON_CHARS - 1]))
        )
        return format_html(
            '<span class="mcp-reason" title="{}">{}</span>', reveal_hidden_text(message), shown
        )

    @admin.display(description="ms", ordering="duration_ms")
    def duration_column(self, obj: AuditEvent) -> str:
        return f"{obj.duration_ms:.1f}"

    @admin.display(description="request · token")
    def ids_column(self, obj: AuditEvent) -> SafeString:
        return format_html(
            '<span class="mcp-line">{}</span><span class="mcp-line">{}</span>',
            _filter_link("request_id", obj.request_id, 10),
            _filter_link("token_id", obj.token_id, 10),
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Prefix match on the indexed identifiers, ORed (each an index range scan)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        query = Q()
        if connections[queryset.db].vendor == "postgresql":
            for name in PREFIX_FIELDS:  # LIKE 'term%' on the varchar_pattern_ops indexes
                query |= Q(**{f"{name}__startswith": term})
        else:
            # SQLite's LIKE ignores case and skips the index; a range on the binary collation
            # is the same prefix match, case-sensitive, on the index.
            upper = term + "\U0010ffff"
            for name in PREFIX_FIELDS:
                query |= Q(**{f"{name}__gte": term, f"{name}__lt": upper})
        return queryset.filter(query), False

    # --- the detail page -----------------------------------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: AuditEvent | None = None) -> Any:
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [
            (
                None,
                {"fields": ("when_field", "request_id", "outcome_field", "duration_ms")},
            ),
            (
                "Caller",
                {"fields": ("issuer", "tenant", "client_id", "subject", "token_id", "scopes")},
            ),
            ("Request", {"fields": ("method", "tool", "pretty_arguments")}),
        ]
        if obj is None or obj.outcome != Outcome.OK or obj.error_code or obj.error_message:
            fieldsets.append(("Error", {"fields": ("error_code", "error_message")}))
        if obj is not None and obj.actor:
            fieldsets.append(("Configuration or data change, export", {"fields": ("actor",)}))
        if obj is not None and obj.is_outbound:
            fieldsets.append(("Outbound call", {"fields": ("made_by",)}))
        elif obj is not None and not obj.is_self_audit:
            fieldsets.append(("Outbound calls", {"fields": ("outbound_calls",)}))
        fieldsets.append(("Connection", {"fields": ("client_ip", "user_agent", "trace_id")}))
        fieldsets.append(("Related rows", {"fields": ("related",)}))
        return [
            (title, {**options, "fields": tuple(shown_field(f) for f in options["fields"])})
            for title, options in fieldsets
        ]

    @admin.display(description="made to other systems")
    def outbound_calls(self, obj: AuditEvent) -> SafeString:
        """The calls this MCP call made to other systems (same request id), in order."""
        rows = list(
            AuditEvent.objects.filter(
                request_id=obj.request_id, method__startswith=OUTBOUND_PREFIX
            ).order_by("id")[: MAX_OUTBOUND_LISTED + 1]
        )
        if not rows:
            return format_html("{}", "(none)")
        items = []
        for row in rows[:MAX_OUTBOUND_LISTED]:
            args = row.arguments if isinstance(row.arguments, dict) else {}
            items.append(
                (
                    reverse("admin:audit_auditevent_change", args=[row.pk]),
                    row.method.removeprefix(OUTBOUND_PREFIX),
                    f"{args.get('http_method', '')} {args.get('host', '')}{args.get('path', '')}",
                    outcome_badge(row.outcome, row.status),
                    row.error_code or "",
                    f"{row.duration_ms:.1f} ms",
                    str(args.get("auth", "")),
                )
            )
        listed = format_html_join(
            "",
            '<li><a href="{}">{}</a> <code>{}</code> {} <code>{}</code> {} · {}</li>',
            items,
        )
        more = ""
        if len(rows) > MAX_OUTBOUND_LISTED:
            more = format_html(
                '<li><a href="{}">all outbound calls of this request</a></li>',
                changelist_url(request_id=obj.request_id, kind="outbound"),
            )
        return format_html('<ul class="mcp-links mcp-outbound">{}{}</ul>', listed, more)

    @admin.display(description="made by")
    def made_by(self, obj: AuditEvent) -> SafeString:
        """The MCP call that made this outbound call."""
        parent = (
            AuditEvent.objects.filter(request_id=obj.request_id)
            .exclude(method__startswith=OUTBOUND_PREFIX)
            .order_by("id")
            .first()
        )
        if parent is None:
            return format_html("{}", "(the call's own row is not in the trail)")
        return format_html(
            '<a href="{}">{} {}</a> {}',
            reverse("admin:audit_auditevent_change", args=[parent.pk]),
            parent.method,
            parent.tool,
            outcome_badge(parent.outcome, parent.status),
        )

    @admin.display(description="time")
    def when_field(self, obj: AuditEvent) -> str:
        return when(obj.created_at)

    @admin.display(description="outcome")
    def outcome_field(self, obj: AuditEvent) -> SafeString:
        return outcome_badge(obj.outcome, obj.status)

    @admin.display(description="arguments (redacted)")
    def pretty_arguments(self, obj: AuditEvent) -> SafeString:
        text = json.dumps(obj.arguments, indent=2, ensure_ascii=False, sort_keys=True, default=str)
        return format_html('<pre class="audit-arguments">{}</pre>', reveal_hidden(text))

    @admin.display(description="same")
    def related(self, obj: AuditEvent) -> SafeString:
        links = [
            ("request_id", obj.request_id, "request"),
            ("token_id", obj.token_id, "token"),
            ("client_id", obj.client_id, "client"),
            ("tenant", obj.tenant, "tenant"),
            ("subject", obj.subject, "subject"),
            ("trace_id", obj.trace_id, "trace"),
        ]
        items = [
            (changelist_url(**{field: value}), f"all rows of this {label}", value)
            for field, value, label in links
            if value
        ]
        if not items:
            return format_html("{}", "(no identifiers)")
        return format_html(
            '<ul class="mcp-links">{}</ul>',
            format_html_join(
                "",
                '<li><a href="{}">{}</a> <code>{}</code></li>',
                ((u, t, visible(v)) for u, t, v in items),
            ),
        )

    # --- export --------------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        export_url = path(
            "export/",
            self.admin_site.admin_view(self.export_view),
            name="{}_{}_export".format(*info),
        )
        return [export_url, *super().get_urls()]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        url = reverse(f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_export")
        params = request.GET.copy()
        for name in (PAGE_VAR, ERROR_FLAG):
            params.pop(name, None)
        links = {}
        for fmt in export.FORMATS:
            params["format"] = fmt
            links[fmt] = f"{url}?{params.urlencode()}"
        context = {
            "export_links": links,
            "overview_url": reverse(f"{self.admin_site.name}:audit_overview_changelist"),
            "clear_all_url": reverse(
                f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_changelist"
            ),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """The changelist's current rows (filters, search, date, ordering) as CSV or JSONL."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        params = request.GET.copy()
        try:
            fmt = export.check_format(params.pop("format", ["csv"])[-1])
        except ValueError as exc:
            return HttpResponseBadRequest(str(exc), content_type="text/plain")
        for name in (PAGE_VAR, ERROR_FLAG):
            params.pop(name, None)
        cl_request = copy.copy(request)
        cl_request.GET = params  # type: ignore[assignment]  # a mutable copy is fine here
        try:
            cl = self.get_changelist_instance(cl_request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Invalid filter parameters.", content_type="text/plain")
        rows = export.values(cl.queryset)
        filters = [(k, v) for k, values in sorted(params.lists()) for v in values]
        audit = ExportAudit(request, fmt, filters)
        if isinstance(request, ASGIRequest):
            # Under ASGI a sync iterator would be read to the end before sending; stream async.
            content: Any = audit.astream(export.aiter_rows(rows, EXPORT_CHUNK_SIZE))
        else:
            content = audit.stream(rows.iterator(chunk_size=EXPORT_CHUNK_SIZE))
        response = StreamingHttpResponse(content, content_type=export.CONTENT_TYPES[fmt])
        name = export.filename(fmt, now=timezone.now())
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


# The overview's admin registers itself on import (kept in its own module).
from audit.admin_overview import OverviewAdmin  # noqa: E402
