"""Every count of a window, from the rollup and the table; and the percentiles."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from django.db import connections, router, transaction
from django.db.models import (
    Aggregate,
    Count,
    F,
    FloatField,
    Func,
    IntegerField,
    Q,
    QuerySet,
    Sum,
)

from audit.filters import not_a_call_q, outbound_q, self_audit_q
from audit.models import AuditEvent, AuditRollup
from audit.overview.window import PERCENTILE_WORK_MEM, ROLLUP_AFTER, Window
from audit.sealing import head


class EpochBucket(Func):
    """``floor(epoch seconds / size)``: the bucket number of a timestamp (UTC)."""

    output_field = IntegerField()

    def __init__(self, expression: Any, size: int) -> None:
        super().__init__(expression)
        self.size = int(size)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        sql, params = compiler.compile(self.source_expressions[0])
        return f"FLOOR(EXTRACT(EPOCH FROM {sql}) / {self.size})::bigint", params

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        sql, params = compiler.compile(self.source_expressions[0])
        return f"(CAST(strftime('%%s', {sql}) AS INTEGER) / {self.size})", params


class PercentileCont(Aggregate):
    """PostgreSQL's ``percentile_cont(p) WITHIN GROUP (ORDER BY expr)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float) -> None:
        # A float literal in the SQL (repr of a float: digits, '.', 'e', '-' only).
        super().__init__(expression, fraction=repr(float(fraction)))


def _whole_days(window: Window) -> tuple[date, date] | None:
    """``[first, last)`` UTC days wholly inside the window, when the rollup should serve them."""
    if window.span <= ROLLUP_AFTER:
        return None
    start = window.start.astimezone(UTC)
    first = start.date() if start.time() == time(0) else start.date() + timedelta(days=1)
    last = window.end.astimezone(UTC).date()
    return (first, last) if first < last else None


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass
class Sources:
    """The two halves of a window: rollup days and the table's remainder."""

    raw: QuerySet[AuditEvent]
    rollup: QuerySet[AuditRollup] | None
    watermark: int


def sources(window: Window, *, kind: str = "call", using: str | None = None) -> Sources:
    """Where the window's rows of ``kind`` (``call``, ``outbound`` or ``config``) are counted
    from."""
    using = using or router.db_for_read(AuditEvent)
    narrowing = window.narrowing()
    events = AuditEvent.objects.using(using).filter(**narrowing)
    if kind == "call":
        events = events.exclude(not_a_call_q())
    else:
        events = events.filter(outbound_q() if kind == "outbound" else self_audit_q())
    in_window = events.filter(created_at__gte=window.start, created_at__lt=window.end)
    days = _whole_days(window)
    last = head(using)
    watermark = last.last_id if last is not None else 0
    if days is None or watermark == 0:
        return Sources(in_window.order_by(), None, watermark)
    first, stop = days
    d0, d1 = _day_start(first), _day_start(stop)
    remainder = in_window.filter(
        Q(created_at__lt=d0) | Q(created_at__gte=d1) | Q(id__gt=watermark)
    ).order_by()
    rollup = AuditRollup.objects.using(using).filter(
        day__gte=first, day__lt=stop, kind=kind, **narrowing
    )
    return Sources(remainder, rollup.order_by(), watermark)


def bucket_size(window: Window) -> int:
    span = window.span
    if span <= timedelta(hours=3):
        return 300
    if span <= ROLLUP_AFTER:
        return 3600
    return 86_400


#: The dimensions of the top lists.
DIMS: tuple[str, ...] = ("tool", "client_id", "tenant")
_EPOCH = date(1970, 1, 1)


@dataclass
class Counts:
    """Calls per (bucket, outcome) and per (dimension value, outcome), from both halves."""

    series: Counter[tuple[int, str]] = field(default_factory=Counter)
    by: dict[str, Counter[tuple[str, str]]] = field(
        default_factory=lambda: {dim: Counter() for dim in DIMS}
    )


def _grouping_sets(queryset: QuerySet[Any], time_col: str, calls: str | None) -> list[Any]:
    """PostgreSQL: every figure's GROUP BY in one scan (``GROUPING SETS``).

    ``queryset`` already selects ``time_col``, ``outcome``, the dimensions and (rollup)
    ``calls``; it becomes the subquery, so its filters are the ORM's own, bound as parameters.
    """
    inner, params = queryset.query.sql_with_params()
    q = connections[queryset.db].ops.quote_name
    t, o = q(time_col), q("outcome")
    dims = [q(d) for d in DIMS]
    n = f"SUM({q(calls)})" if calls else "COUNT(*)"
    sets = ", ".join([f"({t}, {o})", *(f"({d}, {o})" for d in dims)])
    sql = (
        f"SELECT GROUPING({t}, {', '.join(dims)}), {t}, {o}, {', '.join(dims)}, {n} "  # noqa: S608
        f"FROM ({inner}) AS figures GROUP BY GROUPING SETS ({sets})"
    )
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


#: ``GROUPING(time, tool, client_id, tenant)`` of each set: a bit is 1 for an aggregated column.
_SET_OF = {0b0111: "series", 0b1011: "tool", 0b1101: "client_id", 0b1110: "tenant"}


def _add_grouped(counts: Counts, rows: list[Any], to_bucket: Any) -> None:
    for grouping, when_, outcome, tool, client_id, tenant, n in rows:
        which = _SET_OF[int(grouping)]
        if which == "series":
            counts.series[(to_bucket(when_), outcome)] += int(n)
        else:
            value = {"tool": tool, "client_id": client_id, "tenant": tenant}[which]
            counts.by[which][(value, outcome)] += int(n)


def count(src: Sources, size: int) -> Counts:
    """Every count the page shows, in one query per half on PostgreSQL (four elsewhere)."""
    counts = Counts()
    raw = src.raw.annotate(bucket=EpochBucket(F("created_at"), size))

    def day_bucket(day: date) -> int:
        return (day - _EPOCH).days * 86_400 // size

    if connections[src.raw.db].vendor == "postgresql":
        _add_grouped(
            counts, _grouping_sets(raw.values("bucket", "outcome", *DIMS), "bucket", None), int
        )
        if src.rollup is not None:
            rollup = src.rollup.values("day", "outcome", *DIMS, "calls")
            _add_grouped(counts, _grouping_sets(rollup, "day", "calls"), day_bucket)
        return counts
    for bucket, outcome, n in (
        raw.values("bucket", "outcome")
        .annotate(n=Count("id"))
        .values_list("bucket", "outcome", "n")
    ):
        counts.series[(int(bucket), outcome)] += n
    for dim in DIMS:
        for value, outcome, n in (
            src.raw.values(dim, "outcome").annotate(n=Count("id")).values_list(dim, "outcome", "n")
        ):
            counts.by[dim][(value, outcome)] += n
    if src.rollup is not None:
        rollup_series = src.rollup.values("day", "outcome").annotate(n=Sum("calls"))
        for day, outcome, n in rollup_series.values_list("day", "outcome", "n"):
            counts.series[(day_bucket(day), outcome)] += n
        for dim in DIMS:
            grouped = src.rollup.values(dim, "outcome").annotate(n=Sum("calls"))
            for value, outcome, n in grouped.values_list(dim, "outcome", "n"):
                counts.by[dim][(value, outcome)] += n
    return counts


def percentiles(
    window: Window, fractions: tuple[float, ...] = (0.5, 0.95), *, using: str | None = None
) -> dict[str, tuple[int, list[float | None]]]:
    """``{tool: (calls, [p50, p95])}`` of ``duration_ms`` for tool calls in the window."""
    using = using or router.db_for_read(AuditEvent)
    rows = (
        AuditEvent.objects.using(using)
        .filter(created_at__gte=window.start, created_at__lt=window.end, **window.narrowing())
        .exclude(tool="")
        .exclude(not_a_call_q())
        .order_by()
    )
    if connections[using].vendor == "postgresql":
        annotations = {f"p{i}": PercentileCont("duration_ms", f) for i, f in enumerate(fractions)}
        result = {}
        with transaction.atomic(using=using):
            # The ordered-set aggregate sorts every duration of the window: in memory, not on
            # disk (PostgreSQL's default work_mem of 4 MB holds some 100,000 of them).
            with connections[using].cursor() as cursor:
                cursor.execute(f"SET LOCAL work_mem = '{PERCENTILE_WORK_MEM}'")
            found = list(rows.values("tool").annotate(n=Count("id"), **annotations))
        for row in found:
            got = cast(dict[str, Any], row)
            result[got["tool"]] = (got["n"], [got[f"p{i}"] for i in range(len(fractions))])
        return result
    result = {}
    for tool, n in rows.values("tool").annotate(n=Count("id")).values_list("tool", "n"):
        ordered = (
            rows.filter(tool=tool).order_by("duration_ms").values_list("duration_ms", flat=True)
        )
        values: list[float | None] = []
        for fraction in fractions:
            position = fraction * (n - 1)
            low = math.floor(position)
            pair = list(ordered[low : low + 2])
            if not pair:
                values.append(None)
                continue
            high_value = pair[1] if len(pair) > 1 else pair[0]
            values.append(pair[0] + (high_value - pair[0]) * (position - low))
        result[tool] = (n, values)
    return result
