"""The overview's figures: each one equals the rows its link selects, rollup or not."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from audit import overview
from audit.models import AuditEvent, AuditRollup, Outcome
from audit.sealing import seal_pending

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 15, 37, 12, tzinfo=UTC)
TOOLS = ("get_todo", "list_todos", "create_todo")
TENANTS = ("acme", "globex", "initech")


def seed(n: int = 400, days: int = 12, seed_value: int = 7) -> list[AuditEvent]:
    rnd = random.Random(seed_value)
    outcomes = [Outcome.OK] * 7 + [Outcome.DENIED, Outcome.RATE_LIMITED, Outcome.TOOL_ERROR]
    rows = []
    for i in range(n):
        age = timedelta(seconds=(n - i) * days * 86_400 / n)  # oldest first, as ids go
        is_config = i % 50 == 0
        rows.append(
            AuditEvent(
                created_at=NOW - age,
                request_id=f"r{i}",
                tenant=rnd.choice(TENANTS),
                client_id=f"client-{rnd.randrange(5)}",
                method="config/tenant.suspend" if is_config else "tools/call",
                tool="" if is_config or i % 9 == 0 else rnd.choice(TOOLS),
                outcome=Outcome.OK if is_config else rnd.choice(outcomes),
                status=200,
                duration_ms=round(rnd.random() * 50, 3),
            )
        )
    return AuditEvent.objects.bulk_create(rows)


def calls(window: overview.Window, **filters: Any) -> Any:
    rows = (
        AuditEvent.objects.filter(
            created_at__gte=window.start, created_at__lt=window.end, **window.narrowing()
        )
        .exclude(method__startswith="config/")
        .exclude(method__startswith="audit/")
    )
    return rows.filter(**filters)


def percentile_cont(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


WINDOWS = [
    overview.Window(NOW - timedelta(days=30), NOW, "30d"),
    overview.Window(NOW - timedelta(days=7), NOW, "7d"),
    overview.Window(NOW - timedelta(hours=24), NOW, "24h"),
    overview.Window(NOW - timedelta(hours=1), NOW, "1h"),
    overview.Window(
        datetime(2026, 11, 11, 7, 13, 5, tzinfo=UTC), datetime(2026, 11, 17, 22, 1, tzinfo=UTC)
    ),
    overview.Window(NOW - timedelta(days=30), NOW, "30d", tenant="acme"),
    overview.Window(NOW - timedelta(days=7), NOW, "7d", tool="get_todo", client_id="client-1"),
]


@pytest.mark.parametrize("sealed", [0, 150, 400], ids=["no-rollup", "half-sealed", "all-sealed"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: w.preset or "custom-or-narrowed")
def test_every_figure_counts_exactly_its_rows(window, sealed, settings):
    settings.AUDIT_SETTLE_SECONDS = 0
    rows = seed()
    if sealed:
        # Seal the oldest `sealed` rows (they are the oldest ids) and nothing else.
        settings.AUDIT_SETTLE_SECONDS = (
            timezone.now() - rows[sealed - 1].created_at
        ).total_seconds() - 1
        seal_pending(block_rows=64)
        assert AuditRollup.objects.exists()
    ov = overview.build(window)
    assert ov.total == calls(window).count()
    for item in ov.outcomes:
        assert item["calls"] == calls(window, outcome=item["outcome"]).count()
    assert sum(b.total for b in ov.bars) == ov.total
    for bar in ov.bars:
        for seg in bar.segments:
            exact = calls(window).filter(
                created_at__gte=bar.start, created_at__lt=bar.end, outcome=seg["outcome"]
            )
            assert seg["calls"] == exact.count()
    for dim, top in (("tool", ov.tools), ("client_id", ov.clients), ("tenant", ov.tenants)):
        for row in top:
            assert row["calls"] == calls(window, **{dim: row["value"]}).count()
            failures = calls(window, **{dim: row["value"]}).exclude(outcome=Outcome.OK).count()
            assert row["failures"] == failures
    for rate in ov.rates:
        group = dict(overview.RATE_GROUPS)[rate["label"]]
        assert rate["calls"] == calls(window, outcome__in=group).count()
    config = AuditEvent.objects.filter(
        method__startswith="config/",
        created_at__gte=window.start,
        created_at__lt=window.end,
        **window.narrowing(),
    )
    assert ov.config_changes == config.count()
    assert ov.used_rollup == (bool(sealed) and window.span > overview.ROLLUP_AFTER)


def test_percentiles_are_percentile_cont_per_tool():
    seed()
    window = WINDOWS[0]
    result = overview.percentiles(window)
    assert set(result) == set(TOOLS)
    for tool, (n, (p50, p95)) in result.items():
        values = list(calls(window, tool=tool).values_list("duration_ms", flat=True))
        assert n == len(values)
        assert p50 == pytest.approx(percentile_cont(values, 0.5))
        assert p95 == pytest.approx(percentile_cont(values, 0.95))


def test_a_single_call_has_its_own_duration_as_percentiles():
    AuditEvent.objects.create(
        created_at=NOW - timedelta(minutes=5),
        request_id="one",
        outcome="ok",
        status=200,
        method="tools/call",
        tool="get_todo",
        duration_ms=4.25,
    )
    assert overview.percentiles(WINDOWS[3]) == {"get_todo": (1, [4.25, 4.25])}


def test_links_open_the_changelist_on_exactly_those_rows(settings):
    settings.AUDIT_SETTLE_SECONDS = 0
    seed()
    seal_pending(block_rows=100)
    client = Client()
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    window = WINDOWS[4]
    ov = overview.build(window)
    figures = [
        (ov.total, overview.changelist_url(window)),
        *((o["calls"], o["url"]) for o in ov.outcomes),
        *((r["calls"], r["url"]) for r in ov.rates),
        *((t["calls"], t["url"]) for t in ov.tools[:2]),
        *((t["failures"], t["failures_url"]) for t in ov.tenants[:2]),
        *((s["calls"], s["url"]) for b in ov.bars[:3] for s in b.segments),
    ]
    for expected, url in figures:
        query = dict(parse_qsl(urlsplit(url).query))
        assert query["kind"] == "call"
        response = client.get(url)
        assert response.status_code == 200
        assert response.context["cl"].result_count == expected, url


def test_window_from_the_query_string():
    now = NOW
    window, errors = overview.window_from({}, now=now)
    assert (window.preset, window.span, errors) == ("24h", timedelta(hours=24), [])
    window, errors = overview.window_from({"window": "7d", "tenant": "acme", "tool": ""}, now=now)
    assert window.preset == "7d" and window.narrowing() == {"tenant": "acme"}
    window, errors = overview.window_from(
        {"window": "custom", "start": "2026-11-01T00:00", "end": "2026-11-03T12:00"}, now=now
    )
    assert window.preset is None and window.start == datetime(2026, 11, 1, tzinfo=UTC)
    for params, message in (
        ({"window": "custom", "start": "yesterday-ish"}, "not understood"),
        ({"window": "custom", "start": "2026-11-03", "end": "2026-11-01"}, "end after"),
        ({"window": "custom", "start": "2020-01-01", "end": "2026-01-01"}, "at most"),
        ({"window": "fortnight"}, "Unknown window"),
    ):
        window, errors = overview.window_from(params, now=now)
        assert window.preset == "24h" and message in errors[0]


def test_the_page_is_server_rendered_svg_with_no_outside_asset(client, settings):
    settings.AUDIT_SETTLE_SECONDS = 0
    seed(n=60, days=1)
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    html = client.get(
        "/admin/audit/overview/",
        {"window": "custom", "start": "2026-11-19T15:00", "end": "2026-11-20T16:00"},
    ).content.decode()
    assert "<svg" in html and 'class="mcp-bar"' in html
    assert "<script" not in html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    assert "one bar = 1 hour" in html
