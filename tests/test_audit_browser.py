"""The audit admin in a real browser: Playwright driving Debian's chromium over loopback.

What a person sees is asserted (text, links, badges, filters, widths), not status codes.
Screenshots are kept under ``var/screenshots/`` as artefacts. ``make test`` installs chromium
(``apt-get install chromium``) when ``/usr/bin/chromium`` is missing; no browser is downloaded.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from audit.models import AuditEvent, Outcome
from audit.recorder import record
from audit.sealing import seal_pending
from mcpauth.models import Tenant
from tests.conftest import (
    MCP_ACCEPT,
    LiveServer,
    _drop_other_db_sessions,
    call_tool,
    seed_todo_scopes,
)
from todos.models import Todo

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(settings.VAR_DIR) / "screenshots"
PASSWORD = "browser-test-pw"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make test installs it)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api")


class StaticLiveServer(LiveServer):
    """The composed ASGI app, plus the admin's static files (the suite runs with DEBUG off)."""

    def application(self) -> Any:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        return ASGIStaticFilesHandler(super().application())


@pytest.fixture(scope="module")
def server(django_db_setup: None, django_db_blocker: Any) -> Iterator[StaticLiveServer]:
    srv = StaticLiveServer()
    srv.start()
    yield srv
    srv.stop()
    with django_db_blocker.unblock():
        _drop_other_db_sessions()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="audit-browser-")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1440, "height": 900},
            timezone_id="UTC",
            locale="en-US",
        )
        # Loopback only: anything else would be the page reaching out (a CDN, say).
        context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


def shot(page: Any, name: str, *, full: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


def seed(server: StaticLiveServer, mint: Any) -> dict[str, Any]:
    """A day of bulk history (sealed), then real calls over /mcp (ok, denied, unauthenticated)."""
    seed_todo_scopes()
    now = timezone.now()
    outcomes = [Outcome.OK] * 6 + [Outcome.DENIED, Outcome.RATE_LIMITED, Outcome.TOOL_ERROR]
    AuditEvent.objects.bulk_create(
        AuditEvent(
            created_at=now - timedelta(hours=2 + i % 20, minutes=i),
            request_id=uuid.uuid4().hex,
            tenant=("acme", "globex", "initech")[i % 3],
            client_id=f"bulk-client-{i % 4}",
            subject=f"user-{i % 5}",
            token_id=f"jti-{i:04d}",
            method="tools/call",
            tool=("list_todos", "get_todo", "create_todo")[i % 3],
            outcome=outcomes[i % len(outcomes)],
            status={"ok": 200, "denied": 403, "rate_limited": 429}.get(
                outcomes[i % len(outcomes)], 200
            ),
            error_code=""
            if outcomes[i % len(outcomes)] == "ok"
            else str(outcomes[i % len(outcomes)]),
            error_message=""
            if outcomes[i % len(outcomes)] == "ok"
            else "the caller lacks todos.add_todo for this call",
            duration_ms=1.0 + i % 17,
            client_ip="10.0.0.7" if i % 2 else "10.0.0.8",
            arguments={"i": i},
        )
        for i in range(90)
    )
    seal_pending()  # the history; the real calls below are too recent to seal yet
    headers = {**MCP_ACCEPT, "user-agent": "browser-test/1"}
    writer = mint(client_id="browser-writer", org_id="acme", scope="todo:read todo:write")
    reader = mint(client_id="browser-reader", org_id="globex", scope="todo:read")
    for i in range(3):
        body = call_tool("create_todo", {"title": f"todo {i}"})
        r = httpx2.post(
            f"{server.base}/mcp",
            json=body,
            headers={**headers, "authorization": f"Bearer {writer}"},
        )
        assert r.status_code == 200
    for _ in range(2):
        r = httpx2.post(
            f"{server.base}/mcp",
            json=call_tool("create_todo", {"title": "no"}),
            headers={**headers, "authorization": f"Bearer {reader}"},
        )
        assert r.status_code == 403
    r = httpx2.post(f"{server.base}/mcp", json=call_tool("list_todos"), headers=headers)
    assert r.status_code == 401
    User.objects.create_superuser("auditor", "auditor@example.com", PASSWORD)
    return {"denied_real": 2}


@pytest.fixture
def page(
    server: StaticLiveServer,
    browser_context: Any,
    transactional_db: None,
    mint: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    # Playwright's sync API keeps an event loop running in this thread, so Django would refuse
    # the test's own ORM calls as "async unsafe"; they run one at a time here, which is safe
    # (Django's documented switch for such drivers).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    seed(server, mint)
    page = browser_context.new_page()
    page.goto(f"{server.base}/admin/login/?next=/admin/")
    page.fill("#id_username", "auditor")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server.base}/admin/")
    yield page
    page.close()


def go(page: Any, target: Any) -> None:
    """Click a link (a locator or a selector) and wait for the page it opens."""
    with page.expect_navigation():
        (page.locator(target) if isinstance(target, str) else target).click()


def chips(page: Any) -> list[str]:
    return [
        re.sub(r"\s+", " ", t).replace("\u00d7", "").strip()
        for t in page.locator(".mcp-chip").all_inner_texts()
    ]


def test_overview_shows_the_window_at_a_glance(page, server):
    # The admin index links to it.
    go(page, page.get_by_role("link", name="Overview", exact=True))
    assert page.url.endswith("/admin/audit/overview/")
    assert page.locator("h1").inner_text() == "Audit overview"
    total = (
        AuditEvent.objects.filter(created_at__gte=timezone.now() - timedelta(hours=24))
        .exclude(method__startswith="audit/")
        .exclude(method__startswith="config/")
        .count()
    )
    assert page.locator("#audit-total .mcp-card-value").inner_text() == str(total)
    rates = page.locator(".mcp-card-rate").all_inner_texts()
    assert any(r.startswith(tuple("0123456789")) and "denied" in r for r in rates)
    legend = page.locator(".mcp-legend").inner_text()
    for label in ("ok", "denied", "rate limited", "tool error", "unauthenticated"):
        assert label in legend
    assert page.locator("#audit-chart a.mcp-bar").count() > 5
    tools = page.locator("#audit-top-tools tbody tr").all_inner_texts()
    assert any("create_todo" in row for row in tools)
    assert "acme" in page.locator("#audit-top-tenants").inner_text()
    assert "browser-writer" in page.locator("#audit-top-clients").inner_text()
    durations = page.locator("#audit-durations").inner_text().lower()
    assert "p50" in durations and "p95" in durations and "get_todo" in durations
    seal = page.locator("#audit-seal-status").inner_text()
    last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    assert "last sealed id" in seal and re.search(r"unsealed rows\s+\d+", seal)
    assert int(page.locator("#audit-last-sealed").inner_text()) <= last
    shot(page, "overview-24h")


def test_an_overview_bar_opens_exactly_its_rows(page, server):
    page.goto(f"{server.base}/admin/audit/overview/?window=24h")
    segment = page.locator("#audit-chart a.mcp-bar[data-outcome=denied]").first
    title = segment.locator("title").text_content()
    expected = int(title.split()[0])
    with page.expect_navigation():
        segment.dispatch_event("click")
    active = chips(page)
    assert "outcome: denied" in active and "kind: MCP calls" in active
    assert any(c.startswith("from:") for c in active) and any(
        c.startswith("until:") for c in active
    )
    badges = page.locator("#result_list .mcp-badge").all_inner_texts()
    assert badges and set(badges) == {"denied"} and len(badges) == expected
    # The rate card for denials leads to both denial outcomes at once.
    page.goto(f"{server.base}/admin/audit/overview/?window=24h")
    go(page, ".mcp-card-rate[data-rate=denied]")
    assert {"outcome: denied", "outcome: unauthenticated"} <= set(chips(page))
    assert set(page.locator("#result_list .mcp-badge").all_inner_texts()) <= {
        "denied",
        "unauthenticated",
    }


def test_overview_window_and_narrowing(page, server):
    page.goto(f"{server.base}/admin/audit/overview/")
    page.check("input[name=window][value='1h']")
    page.select_option("select[name=tenant]", "acme")
    go(page, "#audit-window-form input[type=submit]")
    assert "tenant acme" in page.locator("#audit-window-text").inner_text()
    assert page.locator(".mcp-bucket").inner_text() == "one bar = 5 minutes"
    # The real calls of the last minutes: 3 ok creates for acme, and nothing of globex.
    assert page.locator("#audit-top-tenants").inner_text().count("globex") == 0
    go(page, page.locator("#audit-top-tools").get_by_role("link", name="create_todo").first)
    assert {"tenant: acme", "tool: create_todo"} <= set(chips(page))
    shot(page, "overview-narrowed-changelist")


def test_changelist_reads_at_a_glance_and_fits_1440(page, server):
    page.goto(f"{server.base}/admin/audit/auditevent/")
    first_time = page.locator("#result_list tbody tr .mcp-when").first.inner_text()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}:\d{2} UTC", first_time.strip())
    headers = page.locator("#result_list thead th").all_inner_texts()
    assert any("error code" in h.lower() for h in headers) and any(
        "reason" in h.lower() for h in headers
    )
    denied = page.locator("#result_list .mcp-badge-bad").first
    assert denied.is_visible()
    colour = denied.evaluate("e => getComputedStyle(e).backgroundColor")
    ok_colour = page.locator("#result_list .mcp-badge-ok").first.evaluate(
        "e => getComputedStyle(e).backgroundColor"
    )
    assert colour != ok_colour
    assert "the caller lacks todos.add_todo" in page.locator("#result_list").inner_text()
    # Every column is on screen at 1440 px: the table is no wider than its box.
    widths = page.evaluate(
        "() => { const t = document.querySelector('#result_list');"
        " const box = document.querySelector('.results');"
        " return [t.getBoundingClientRect().right, box.getBoundingClientRect().right,"
        " window.innerWidth, document.documentElement.scrollWidth]; }"
    )
    assert widths[0] <= widths[1] + 1 and widths[3] <= widths[2]
    assert page.locator("#result_list th:has-text('request')").is_visible()
    shot(page, "changelist", full=False)


def test_changelist_filters_are_visible_and_combine(page, server):
    base = f"{server.base}/admin/audit/auditevent/"
    page.goto(base)
    filters = page.locator("#changelist-filter")
    go(page, filters.get_by_role("link", name="denied", exact=True))
    assert "☑" in filters.get_by_role("link", name="denied", exact=True).inner_text()
    go(page, filters.get_by_role("link", name="rate limited", exact=True))
    assert {"outcome: denied", "outcome: rate limited"} <= set(chips(page))
    assert set(page.locator("#result_list .mcp-badge").all_inner_texts()) == {
        "denied",
        "rate limited",
    }
    go(page, filters.get_by_role("link", name="any failure", exact=True))
    assert "outcome: any failure" in chips(page)
    assert "ok" not in page.locator("#result_list .mcp-badge").all_inner_texts()
    # A filter set by URL alone shows up too, and "clear all" removes everything.
    page.goto(base + "?client_ip=10.0.0.7")
    assert chips(page) == ["client IP: 10.0.0.7"]
    count_text = page.locator("#audit-result-count").inner_text()
    assert count_text == f"{AuditEvent.objects.filter(client_ip='10.0.0.7').count()} audit events"
    go(page, "#audit-clear-all")
    assert chips(page) == []
    # Click-to-filter from a row, and a time preset.
    link = page.locator("#result_list .field-caller_column a.mcp-filter[href*='tenant=']").first
    tenant = link.inner_text()
    go(page, link)
    assert chips(page) == [f"tenant: {tenant}"]
    go(page, filters.get_by_role("link", name="last hour", exact=True))
    assert {f"tenant: {tenant}", "from: 1h"} <= set(chips(page))
    # Prefix search on an identifier.
    page.goto(base)
    page.fill("#searchbar", "jti-004")
    with page.expect_navigation():
        page.press("#searchbar", "Enter")
    assert "search: jti-004" in chips(page)
    rows = page.locator("#result_list tbody tr").count()
    assert rows == AuditEvent.objects.filter(token_id__startswith="jti-004").count() == 10
    shot(page, "changelist-filters", full=False)


def test_detail_pages_link_to_their_request_token_and_client(page, server):
    denied = AuditEvent.objects.filter(outcome="denied", client_id="browser-reader").first()
    ok = AuditEvent.objects.filter(
        outcome="ok", tool="create_todo", client_id="browser-writer"
    ).first()
    page.goto(f"{server.base}/admin/audit/auditevent/{denied.pk}/change/")
    text = page.locator("#content-main").inner_text()
    assert "Error" in page.locator("fieldset h2").all_inner_texts()
    assert denied.error_code in text
    assert re.search(r"\d{2}:\d{2}:\d{2} UTC", text)
    related = page.locator(".field-related")
    assert "all rows of this request" in related.inner_text()
    shot(page, "detail-denied")
    go(page, related.get_by_role("link", name="all rows of this client"))
    assert chips(page) == ["client: browser-reader"]
    assert page.locator("#result_list tbody tr").count() == 2
    page.goto(f"{server.base}/admin/audit/auditevent/{ok.pk}/change/")
    assert "Error" not in page.locator("fieldset h2").all_inner_texts()
    assert "Trace id" in page.locator("#content-main").inner_text()
    shot(page, "detail-ok")
    go(page, page.locator(".field-related").get_by_role("link", name="all rows of this token"))
    assert chips(page)[0].startswith("token: ")


def test_api_docs_render_offline(page, server):
    page.goto(f"{server.base}/api/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "Governed MCP server" in page.locator(".swagger-ui .info .title").inner_text()
    assert "/health" in page.locator(".swagger-ui").inner_text()
    shot(page, "api-docs")


def test_lookalike_tenants_and_tools_are_told_apart(page, server):
    """``acme`` with a Cyrillic U+0430, a full-width ``acme`` and a tool named
    ``\\u202eodot_eteled`` are not drawn as ``acme``/``delete_todo``: they read escaped, in a
    marked box that names the character."""
    cyrillic, fullwidth, bidi_tool = "\u0430cme", "\uff41\uff43\uff4d\uff45", "\u202eodot_eteled"
    for ext in (cyrillic, fullwidth):
        Tenant.objects.create(external_id=ext, name="Acme")
    for tenant, tool in ((cyrillic, "list_todos"), (fullwidth, bidi_tool), ("acme", "get_todo")):
        record(
            outcome=Outcome.OK,
            status=200,
            request_id=uuid.uuid4().hex,
            method="tools/call",
            tool=tool,
            tenant=tenant,
            client_id="look\u200dalike",
        )
    page.goto(f"{server.base}/admin/audit/auditevent/?created_at__gte=1h")
    results = page.locator("#result_list")
    text = results.inner_text()
    assert "\\u0430cme" in text and "\\uff41\\uff43\\uff4d\\uff45" in text
    assert "\\u202eodot_eteled" in text and "look\\u200dalike" in text
    for raw in ("\u0430", "\uff41", "\u202e", "\u200d"):
        assert raw not in page.locator("body").inner_text()
    assert "delete_todo" not in text  # what the bidi control would have drawn
    marked = results.locator(".mcp-esc-other", has_text="\\u0430").first
    assert marked.get_attribute("title") == "U+0430 CYRILLIC SMALL LETTER A (not ASCII)"
    style = marked.evaluate(
        "e => [getComputedStyle(e).borderTopStyle, getComputedStyle(e).fontFamily]"
    )
    assert style[0] == "dashed" and "monospace" in style[1]
    bidi = results.locator(".mcp-esc-bidi").first
    plain = results.locator("a.mcp-filter:text-is('acme')").first
    assert plain.is_visible()  # the real acme reads as before
    assert bidi.evaluate("e => getComputedStyle(e).borderTopStyle") == "solid"
    shot(page, "changelist-lookalikes", full=False)
    page.goto(f"{server.base}/admin/audit/overview/?window=1h")
    tops = page.locator("#audit-top-tenants").inner_text()
    assert "\\u0430cme" in tops and "\\uff41\\uff43\\uff4d\\uff45" in tops
    assert "\\u202eodot_eteled" in page.locator("#audit-top-tools").inner_text()
    shot(page, "overview-lookalikes")
    page.goto(f"{server.base}/admin/mcpauth/tenant/")
    ids = page.locator("#result_list .field-external_id_column").all_inner_texts()
    assert {"acme", "\\u0430cme", "\\uff41\\uff43\\uff4d\\uff45"} <= set(ids)
    shot(page, "tenants-lookalikes", full=False)
    row = AuditEvent.objects.get(tool=bidi_tool)
    page.goto(f"{server.base}/admin/audit/auditevent/{row.pk}/change/")
    assert "\\u202eodot_eteled" in page.locator("#content h2").first.inner_text()
    assert page.locator(".field-tool .mcp-esc-bidi").count() == 1
    assert "\\u202eodot_eteled" in page.title()
    shot(page, "detail-lookalike")
    fake = Tenant.objects.get(external_id=cyrillic)
    Todo.all_tenants.create(tenant=fake, title="lookalike todo", created_by="user-x")
    page.goto(f"{server.base}/admin/todos/todo/")
    tenants = page.locator("#result_list .field-tenant_column").all_inner_texts()
    assert "Acme (\\u0430cme)" in tenants
    shot(page, "todos-lookalikes", full=False)
