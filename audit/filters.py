"""The audit changelist's filters, each cheap on a table of many million rows.

* :class:`OutcomeFilter`: several outcomes at once (``?outcome=denied&outcome=rate_limited``),
  or ``?outcome=failure`` for every outcome but ``ok``.
* :class:`TimeRangeFilter`: ``created_at__gte`` / ``created_at__lt`` as ISO 8601 date-times
  (naive = UTC) or ages (``24h``: that long ago), with presets; on the time index.
* :class:`KindFilter`: MCP calls, or the trail's own rows (configuration changes, exports).
* :class:`ToolFilter`, :class:`TenantFilter`, :class:`ClientFilter`: one value, ``""`` for
  "none"; choices from the providers of :mod:`audit.choices` (the tool registry, the tenant
  table) and the most recent rows (no DISTINCT over the table), labelled by
  :func:`audit.display.visible` (look-alikes escaped and marked).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from audit import choices
from audit.display import visible
from audit.models import FAILURES, OUTBOUND_PREFIX, SELF_AUDIT_PREFIXES, AuditEvent, Outcome
from audit.timeparse import parse_instant

#: The client filter offers the client ids seen among this many most recent rows.
RECENT_CLIENT_ROWS = 1000
#: The tenant filter lists at most this many tenants (by external id).
MAX_TENANT_CHOICES = 500
NONE_LABEL = "(none)"
FAILURE = "failure"
#: The changelist's time presets: (label, age).
TIME_PRESETS: tuple[tuple[str, str], ...] = (
    ("last hour", "1h"),
    ("last 24 hours", "24h"),
    ("last 7 days", "7d"),
    ("last 30 days", "30d"),
)


def self_audit_q() -> Q:
    """Rows the trail wrote about itself (configuration and data changes, exports, pruning)."""
    query = Q(pk__in=[])
    for prefix in SELF_AUDIT_PREFIXES:
        query |= Q(method__startswith=prefix)
    return query


def outbound_q() -> Q:
    """Rows of calls to other systems made by MCP calls (``outbound/<downstream>``)."""
    return Q(method__startswith=OUTBOUND_PREFIX)


def not_a_call_q() -> Q:
    """Rows that are not MCP calls: the trail's own, and outbound calls."""
    return self_audit_q() | outbound_q()


class OutcomeFilter(admin.ListFilter):
    """Outcomes, several at once; ``failure`` = every outcome but ``ok``."""

    title = "outcome"
    parameter_name = "outcome"
    template = "admin/audit/filter_multi.html"

    def __init__(
        self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any
    ) -> None:
        super().__init__(request, params, model, model_admin)
        values = params.pop(self.parameter_name, None)
        self.selected: list[str] = []
        if values:
            self.used_parameters[self.parameter_name] = values
            for value in values:
                for item in str(value).split(","):
                    if item and item not in self.selected:
                        self.selected.append(item)

    def outcomes(self) -> set[str]:
        chosen: set[str] = set()
        for item in self.selected:
            if item == FAILURE:
                chosen.update(FAILURES)
            elif item in Outcome.values:
                chosen.add(item)
        return chosen

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return [self.parameter_name]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.selected:
            return queryset
        unknown = [v for v in self.selected if v != FAILURE and v not in Outcome.values]
        if unknown:
            messages.warning(request, "Unknown outcome ignored in the filter.")
        chosen = self.outcomes()
        if len(chosen) == 1:
            return queryset.filter(outcome=next(iter(chosen)))
        return queryset.filter(outcome__in=sorted(chosen))

    def _toggle(self, value: str) -> list[str]:
        if value == FAILURE:
            return [] if self.selected == [FAILURE] else [FAILURE]
        current = [v for v in self.selected if v != FAILURE]
        if FAILURE in self.selected:
            current = list(FAILURES)
        return [v for v in current if v != value] if value in current else [*current, value]

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:
        yield {
            "selected": not self.selected,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "All",
        }
        chosen = self.outcomes()
        yield {
            "selected": self.selected == [FAILURE] or (chosen == set(FAILURES)),
            "query_string": self._query(changelist, self._toggle(FAILURE)),
            "display": "any failure",
            "multi": False,
        }
        for value, label in Outcome.choices:
            yield {
                "selected": value in chosen,
                "query_string": self._query(changelist, self._toggle(value)),
                "display": label,
                "multi": True,
            }

    def _query(self, changelist: ChangeList, values: list[str]) -> str:
        if not values:
            return str(changelist.get_query_string(remove=[self.parameter_name]))
        return str(changelist.get_query_string({self.parameter_name: values}))


class TimeRangeFilter(admin.ListFilter):
    """``created_at__gte`` (from, inclusive) and ``created_at__lt`` (until, exclusive)."""

    title = "time"
    since_param = "created_at__gte"
    until_param = "created_at__lt"
    template = "admin/audit/filter_time.html"

    def __init__(
        self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any
    ) -> None:
        super().__init__(request, params, model, model_admin)
        self.raw: dict[str, str] = {}
        for name in (self.since_param, self.until_param):
            values = [v for v in params.pop(name, None) or () if str(v).strip()]
            if values:  # an empty form field is no bound
                self.used_parameters[name] = values
                self.raw[name] = str(values[-1]).strip()
        self.request = request

    def bound(self, name: str) -> datetime | None:
        raw = self.raw.get(name)
        if not raw:
            return None
        try:
            return parse_instant(raw, naive_tz=timezone.get_current_timezone())
        except ValueError:
            return None

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return [self.since_param, self.until_param]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        for name, lookup in ((self.since_param, "gte"), (self.until_param, "lt")):
            if name not in self.raw:
                continue
            value = self.bound(name)
            if value is None:
                messages.error(
                    request,
                    "A time bound was not understood and is ignored: use ISO 8601 "
                    "(2025-01-31T12:00:00Z) or an age such as 24h or 7d.",
                )
                continue
            queryset = queryset.filter(**{f"created_at__{lookup}": value})
        return queryset

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:
        yield {
            "selected": not self.raw,
            "query_string": changelist.get_query_string(
                remove=[self.since_param, self.until_param]
            ),
            "display": "Any time",
        }
        current = self.raw.get(self.since_param) if self.until_param not in self.raw else None
        for label, age in TIME_PRESETS:
            query = changelist.get_query_string({self.since_param: age}, [self.until_param])
            yield {"selected": current == age, "query_string": query, "display": label}

    def form_values(self) -> dict[str, str]:
        """The bounds as ``datetime-local`` values in the current time zone, for the form."""
        values = {}
        for name in (self.since_param, self.until_param):
            value = self.bound(name)
            values[name] = timezone.localtime(value).strftime("%Y-%m-%dT%H:%M:%S") if value else ""
        return values


class KindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("call", "MCP calls"),
            ("outbound", "outbound calls"),
            ("config", "configuration and data changes, exports"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "call":
            return queryset.exclude(not_a_call_q())
        if self.value() == "outbound":
            return queryset.filter(outbound_q())
        if self.value() == "config":
            return queryset.filter(self_audit_q())
        return queryset


class _ExactValueFilter(admin.SimpleListFilter):
    """Filters ``field == value``; ``""`` selects rows where the field is empty."""

    field_name = ""

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field_name: value})

    def with_current(
        self, choices: list[tuple[str, str | SafeString]]
    ) -> list[tuple[str, str | SafeString]]:
        """Keep the selected value visible even when it is no longer among the choices."""
        current = self.value()
        if current is not None and current not in {value for value, _ in choices}:
            choices.insert(0, (current, visible(current) if current else NONE_LABEL))
        return choices


class ToolFilter(_ExactValueFilter):
    title = "tool"
    parameter_name = field_name = "tool"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str | SafeString]]:
        tools: list[tuple[str, str | SafeString]] = [
            (name, visible(name)) for name in choices.tools()
        ]
        return self.with_current([*tools, ("", f"{NONE_LABEL} not a tool call")])


class TenantFilter(_ExactValueFilter):
    title = "tenant"
    parameter_name = field_name = "tenant"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str | SafeString]]:
        tenants: list[tuple[str, str | SafeString]] = [
            (
                external_id,
                format_html("{} ({})", visible(name), visible(external_id))
                if name
                else visible(external_id),
            )
            for external_id, name in choices.tenants(MAX_TENANT_CHOICES)
        ]
        return self.with_current([*tenants, ("", f"{NONE_LABEL} unauthenticated")])


class ClientFilter(_ExactValueFilter):
    """Client ids seen among the most recent rows (a bounded subquery, not a full DISTINCT)."""

    title = "client (recent)"
    parameter_name = field_name = "client_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str | SafeString]]:
        recent = AuditEvent.objects.order_by("-created_at", "-id").values("pk")
        clients = (
            AuditEvent.objects.filter(pk__in=recent[:RECENT_CLIENT_ROWS])
            .exclude(client_id="")
            .order_by("client_id")
            .values_list("client_id", flat=True)
            .distinct()
        )
        return self.with_current([(client, visible(client)) for client in clients])


class IssuerFilter(_ExactValueFilter):
    """Issuers seen among the most recent rows (a bounded subquery, not a full DISTINCT)."""

    title = "issuer (recent)"
    parameter_name = field_name = "issuer"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        recent = AuditEvent.objects.order_by("-created_at", "-id").values("pk")
        issuers = (
            AuditEvent.objects.filter(pk__in=recent[:RECENT_CLIENT_ROWS])
            .exclude(issuer="")
            .order_by("issuer")
            .values_list("issuer", flat=True)
            .distinct()
        )
        choices = [(issuer, visible(issuer)) for issuer in issuers]
        return self.with_current([*choices, ("", f"{NONE_LABEL} unauthenticated or older rows")])
