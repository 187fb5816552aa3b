"""Counting and the date drill-down for the audit changelist, without scanning the table.

* :class:`EstimatedCountPaginator`: an exact count up to ``exact_limit`` rows, else
  PostgreSQL's planner estimate (``is_estimate``, shown as ≈ by the template).
* :func:`date_hierarchy`: Django's year/month/day drill-down, built from one ``MIN``/``MAX``
  (index look-ups) instead of ``SELECT DISTINCT`` over dates.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Max, Min, QuerySet
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.text import capfirst

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
