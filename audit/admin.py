"""A read-only admin for the audit trail, built to stay fast on a table of many million rows.

* Nobody can add, change or delete rows here (retention is ``manage.py audit_prune``).
* No full scan or unfiltered ``COUNT(*)`` per page view: the paginator counts exactly only up
  to :attr:`EstimatedCountPaginator.exact_limit` rows and otherwise uses PostgreSQL's planner
  estimate; facet counts are off; filter choices come from the tenant table, the tool registry
  and the most recent rows; the date drill-down is built from ``MIN``/``MAX`` (index look-ups)
  rather than ``SELECT DISTINCT`` over dates; search is exact equality on indexed columns.
* "Export CSV/JSONL" streams the currently filtered rows (see :mod:`audit.export`).
"""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG, PAGE_VAR, ChangeList
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Max, Min, Q, QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from audit import export
from audit.models import AuditEvent
from mcpauth.models import Tenant
from mcpauth.registry import registry

#: Rows fetched per database round trip by the admin export.
EXPORT_CHUNK_SIZE = 2000
#: The client filter offers the client ids seen among this many most recent rows.
RECENT_CLIENT_ROWS = 1000
#: The tenant filter lists at most this many tenants (by external id).
MAX_TENANT_CHOICES = 500
NONE_LABEL = "(none)"


# --- counting without COUNT(*) -------------------------------------------------------------


def _plan_rows(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of how many rows ``queryset`` returns (``EXPLAIN``, not run)."""
    sql, params = queryset.order_by().query.get_compiler(using=queryset.db).as_sql()
    with connections[queryset.db].cursor() as cursor:
        # The SQL is the ORM's own compiled query; user input only travels in ``params``.
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    plan = row[0]
    if isinstance(plan, str | bytes):
        plan = json.loads(plan)
    try:
        return int(plan[0]["Plan"]["Plan Rows"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _table_rows(queryset: QuerySet[Any]) -> int | None:
    """``pg_class.reltuples`` for the queryset's table; ``None`` if never analyzed."""
    connection = connections[queryset.db]
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [table])
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


def estimate_count(queryset: QuerySet[Any]) -> int | None:
    """A PostgreSQL planner estimate of ``queryset.count()``, or ``None`` elsewhere."""
    if connections[queryset.db].vendor != "postgresql":
        return None
    query = queryset.query
    unfiltered = not query.where and not query.distinct and not query.is_sliced
    estimate = _table_rows(queryset) if unfiltered else None
    return estimate if estimate is not None else _plan_rows(queryset)


class EstimatedCountPaginator(Paginator):
    """A paginator whose count never scans a large table.

    On PostgreSQL, when the planner expects more than :attr:`exact_limit` rows (``reltuples``
    for the whole table, ``EXPLAIN`` for a filtered set), that estimate is the count. Otherwise
    the rows are counted, but at most ``exact_limit + 1`` of them
    (``SELECT COUNT(*) FROM (… LIMIT n)``), which also catches a planner that guessed too low.
    Other databases count exactly past the limit. :attr:`is_estimate` tells the template.
    """

    exact_limit = 10_000
    is_estimate = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        estimate = estimate_count(queryset)
        if estimate is not None and estimate > self.exact_limit:
            self.is_estimate = True
            return estimate
        bounded = queryset.order_by()[: self.exact_limit + 1].count()
        if bounded <= self.exact_limit:
            return bounded
        if estimate is None:
            return queryset.count()
        self.is_estimate = True
        return max(bounded, estimate)


# --- list filters ----------------------------------------------------------------------------


class _ExactValueFilter(admin.SimpleListFilter):
    """Filters ``field == value``; ``""`` selects rows where the field is empty."""

    field_name = ""

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field_name: value})

    def with_current(self, choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Keep the selected value visible even when it is no longer among the choices."""
        current = self.value()
        if current is not None and current not in {value for value, _ in choices}:
            choices.insert(0, (current, current or NONE_LABEL))
        return choices


class ToolFilter(_ExactValueFilter):
    title = "tool"
    parameter_name = field_name = "tool"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = [(name, name) for name in registry.names()]
        return self.with_current([*choices, ("", f"{NONE_LABEL} not a tool call")])


class TenantFilter(_ExactValueFilter):
    title = "tenant"
    parameter_name = field_name = "tenant"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        tenants = Tenant.objects.order_by("external_id").values_list("external_id", "name")
        choices = [
            (external_id, f"{name} ({external_id})" if name else external_id)
            for external_id, name in tenants[:MAX_TENANT_CHOICES]
        ]
        return self.with_current([*choices, ("", f"{NONE_LABEL} unauthenticated")])


class ClientFilter(_ExactValueFilter):
    """Client ids seen among the most recent rows (a bounded subquery, not a full DISTINCT)."""

    title = "client (recent)"
    parameter_name = field_name = "client_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        recent = AuditEvent.objects.order_by("-created_at", "-id").values("pk")
        clients = (
            AuditEvent.objects.filter(pk__in=recent[:RECENT_CLIENT_ROWS])
            .exclude(client_id="")
            .order_by("client_id")
            .values_list("client_id", flat=True)
            .distinct()
        )
        return self.with_current([(client, client) for client in clients])


# --- the date drill-down, from MIN/MAX instead of SELECT DISTINCT ------------------------------


#: With a search active, the drill-down spans the first this many matching rows.
SEARCH_BOUNDS_ROWS = 10_000


def date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    """The context of ``admin/date_hierarchy.html``, as Django's tag builds it, but cheap.

    Django lists the years/months/days that have rows with ``SELECT DISTINCT`` over the
    (filtered) table; here the links span the range between the first and the last row, found
    with one ``MIN``/``MAX`` query that an index answers. A period in between may be empty.
    """
    field = cl.date_hierarchy
    year_field, month_field, day_field = (f"{field}__{part}" for part in ("year", "month", "day"))
    year = cl.params.get(year_field)
    month = cl.params.get(month_field) if year else None
    day = cl.params.get(day_field) if month else None

    def link(filters: dict[str, Any]) -> str:
        return str(cl.get_query_string(filters, [f"{field}__"]))

    if year and month and day:
        date = datetime.date(int(year), int(month), int(day))
        return {
            "show": True,
            "back": {
                "link": link({year_field: year, month_field: month}),
                "title": capfirst(formats.date_format(date, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(date, "MONTH_DAY_FORMAT"))}],
        }
    rows = cl.queryset.order_by()
    if cl.query:
        # An exact-match search selects through its own indexes; left alone, the planner may
        # answer MIN/MAX by walking the whole time index instead. Bound the set it aggregates.
        rows = rows.values(field)[:SEARCH_BOUNDS_ROWS]
    bounds = rows.aggregate(first=Min(field), last=Max(field))
    first, last = bounds["first"], bounds["last"]
    if first is not None and last is not None:
        first, last = timezone.localtime(first), timezone.localtime(last)
        if not year and first.year == last.year:
            year = str(first.year)
            if first.month == last.month:
                month = str(first.month)
    choices: list[dict[str, str]] = []
    if year and month:
        if first is not None and last is not None:
            for n in range(first.day, last.day + 1):
                date = datetime.date(int(year), int(month), n)
                choices.append(
                    {
                        "link": link({year_field: year, month_field: month, day_field: n}),
                        "title": capfirst(formats.date_format(date, "MONTH_DAY_FORMAT")),
                    }
                )
        back = {"link": link({year_field: year}), "title": str(year)}
    elif year:
        if first is not None and last is not None:
            for n in range(first.month, last.month + 1):
                date = datetime.date(int(year), n, 1)
                choices.append(
                    {
                        "link": link({year_field: year, month_field: n}),
                        "title": capfirst(formats.date_format(date, "YEAR_MONTH_FORMAT")),
                    }
                )
        back = {"link": link({}), "title": "All dates"}
    else:
        if first is not None and last is not None:
            for n in range(first.year, last.year + 1):
                choices.append({"link": link({year_field: str(n)}), "title": str(n)})
        return {"show": True, "back": None, "choices": choices}
    return {"show": True, "back": back, "choices": choices}


class AuditChangeList(ChangeList):
    @cached_property
    def audit_date_hierarchy(self) -> dict[str, Any]:
        return date_hierarchy(self) if self.date_hierarchy else {"show": False}


# --- the admin ----------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    change_list_template = "admin/audit/auditevent/change_list.html"
    list_display = (
        "created_at",
        "outcome",
        "status",
        "method",
        "tool",
        "tenant",
        "client_id",
        "subject",
        "duration_ms",
        "request_id",
    )
    list_display_links = ("created_at",)
    list_filter = ("outcome", ToolFilter, TenantFilter, ClientFilter)
    date_hierarchy = "created_at"
    search_fields = ("=client_id", "=subject", "=request_id")
    search_help_text = "Exact client id, subject or request id."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 100
    actions = None
    fieldsets = (
        (None, {"fields": ("created_at", "request_id", "outcome", "status", "duration_ms")}),
        ("Caller", {"fields": ("tenant", "client_id", "subject", "token_id", "scopes")}),
        ("Request", {"fields": ("method", "tool", "pretty_arguments")}),
        ("Error", {"fields": ("error_code", "error_message")}),
        ("Connection", {"fields": ("client_ip", "user_agent")}),
    )
    readonly_fields = ("pretty_arguments",)

    # Append-only: rows are written by audit.recorder and removed by audit_prune only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    @admin.display(description="arguments (redacted)")
    def pretty_arguments(self, obj: AuditEvent) -> SafeString:
        text = json.dumps(obj.arguments, indent=2, ensure_ascii=False, sort_keys=True, default=str)
        return format_html('<pre class="audit-arguments">{}</pre>', text)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AuditChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Exact match on client id, subject or request id: three indexed equalities, ORed."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(client_id=term) | Q(subject=term) | Q(request_id=term)), False

    # --- export -------------------------------------------------------------------------------

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
        return super().changelist_view(request, {"export_links": links, **(extra_context or {})})

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
        if isinstance(request, ASGIRequest):
            # Under ASGI a sync iterator would be read to the end before sending; stream async.
            content: Any = export.astream(export.aiter_rows(rows, EXPORT_CHUNK_SIZE), fmt)
        else:
            content = export.stream(rows.iterator(chunk_size=EXPORT_CHUNK_SIZE), fmt)
        response = StreamingHttpResponse(content, content_type=export.CONTENT_TYPES[fmt])
        name = export.filename(fmt, now=timezone.now())
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
