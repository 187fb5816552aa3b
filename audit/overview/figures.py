"""The page's figures (:func:`build`), each with the changelist link of exactly its rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.db.models import (
    Sum,
)
from django.urls import reverse

from audit.models import FAILURES, AuditRollup, Outcome
from audit.overview.chart import Bar, chart
from audit.overview.counts import bucket_size, count, percentiles, sources
from audit.overview.window import COLOURS, OUTCOME_ORDER, RATE_GROUPS, TOP_N, Window


def changelist_url(window: Window, **filters: Any) -> str:
    """The changelist showing exactly the rows of a figure."""
    params: list[tuple[str, str]] = [
        ("created_at__gte", window.start.isoformat()),
        ("created_at__lt", window.end.isoformat()),
    ]
    merged = {**window.narrowing(), **{k: v for k, v in filters.items() if k != "outcome"}}
    params.extend(sorted(merged.items()))
    outcomes = filters.get("outcome")
    if isinstance(outcomes, str):
        outcomes = [outcomes]
    for outcome in outcomes or ():
        params.append(("outcome", outcome))
    params.append(("kind", "call"))
    return f"{reverse('admin:audit_auditevent_changelist')}?{urlencode(params)}"


@dataclass
class Overview:
    window: Window
    bucket_seconds: int
    total: int
    outcomes: list[dict[str, Any]]
    rates: list[dict[str, Any]]
    bars: list[Bar]
    tools: list[dict[str, Any]]
    clients: list[dict[str, Any]]
    tenants: list[dict[str, Any]]
    durations: list[dict[str, Any]]
    config_changes: int
    used_rollup: bool
    chart: dict[str, Any] = field(default_factory=dict)


def _top(
    window: Window, counts: Counter[tuple[str, str]], dim: str, limit: int = TOP_N
) -> list[dict[str, Any]]:
    totals: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for (value, outcome), n in counts.items():
        totals[value] += n
        if outcome in FAILURES:
            failures[value] += n
    grand = sum(totals.values()) or 1
    rows = []
    for value, n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]:
        rows.append(
            {
                "value": value,
                "label": value or "(none)",
                "calls": n,
                "share": round(100 * n / grand, 1),
                "failures": failures[value],
                "url": changelist_url(window, **{dim: value}),
                "failures_url": changelist_url(window, outcome=list(FAILURES), **{dim: value}),
            }
        )
    return rows


def build(window: Window, *, using: str | None = None) -> Overview:
    src = sources(window, using=using)
    size = bucket_size(window)
    counts = count(src, size)
    series = counts.series
    per_outcome: Counter[str] = Counter()
    for (_, outcome), n in series.items():
        per_outcome[outcome] += n
    total = sum(per_outcome.values())
    outcomes = [
        {
            "outcome": o,
            "label": Outcome(o).label,
            "calls": per_outcome[o],
            "rate": round(100 * per_outcome[o] / total, 2) if total else 0.0,
            "colour": COLOURS[o],
            "url": changelist_url(window, outcome=o),
        }
        for o in OUTCOME_ORDER
    ]
    rates = []
    for label, group in RATE_GROUPS:
        n = sum(per_outcome[o] for o in group)
        rates.append(
            {
                "label": label,
                "calls": n,
                "rate": round(100 * n / total, 2) if total else 0.0,
                "url": changelist_url(window, outcome=list(group)),
                "outcomes": ", ".join(Outcome(o).label for o in group),
            }
        )
    bars = _bars(window, size, series)
    tools = _top(window, counts.by["tool"], "tool")
    clients = _top(window, counts.by["client_id"], "client_id")
    tenants = _top(window, counts.by["tenant"], "tenant")
    durations = [
        {
            "tool": tool,
            "calls": n,
            "p50": values[0],
            "p95": values[1],
            "url": changelist_url(window, tool=tool),
        }
        for tool, (n, values) in sorted(percentiles(window, using=using).items())
    ]
    overview = Overview(
        window=window,
        bucket_seconds=size,
        total=total,
        outcomes=outcomes,
        rates=rates,
        bars=bars,
        tools=tools,
        clients=clients,
        tenants=tenants,
        durations=durations,
        config_changes=_config_changes(window, using=using),
        used_rollup=src.rollup is not None,
    )
    overview.chart = chart(overview.bars, overview.bucket_seconds)
    return overview


def _config_changes(window: Window, *, using: str | None = None) -> int:
    src = sources(window, kind=AuditRollup.Kind.CONFIG, using=using)
    total = src.raw.count()
    if src.rollup is not None:
        total += src.rollup.aggregate(n=Sum("calls"))["n"] or 0
    return total


def _bars(window: Window, size: int, series: Counter[tuple[int, str]]) -> list[Bar]:
    first = int(window.start.timestamp()) // size
    last = (int(window.end.timestamp()) - 1) // size
    by_bucket: dict[int, dict[str, int]] = defaultdict(dict)
    for (bucket, outcome), n in series.items():
        by_bucket[bucket][outcome] = n
    bars = []
    for bucket in range(first, last + 1):
        start = max(window.start, datetime.fromtimestamp(bucket * size, tz=UTC))
        end = min(window.end, datetime.fromtimestamp((bucket + 1) * size, tz=UTC))
        counts = by_bucket.get(bucket, {})
        bar = Bar(start, end, total=sum(counts.values()))
        sub = Window(start, end, None, window.tenant, window.client_id, window.tool)
        for outcome in OUTCOME_ORDER:
            n = counts.get(outcome, 0)
            if n:
                bar.segments.append(
                    {
                        "outcome": outcome,
                        "label": Outcome(outcome).label,
                        "calls": n,
                        "colour": COLOURS[outcome],
                        "url": changelist_url(sub, outcome=outcome),
                    }
                )
        bars.append(bar)
    return bars
