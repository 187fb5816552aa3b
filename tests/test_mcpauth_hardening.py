"""Security review findings over real HTTP: the per-IP refusal budget and tenant attribution.

* item 2: a valid token is never refused because of other requests' failures;
* item 3: refusals before admission (malformed ``Authorization``, bad ``Host``/``Origin``, 413)
  count against the per-IP budget, then go unrecorded one by one, with a summary row per window;
* item 8: a suspended tenant's refusals carry the tenant.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx2
import pytest
from django.core.management import call_command

from audit.models import AuditEvent
from mcpauth.models import Tenant
from tests.conftest import MCP_ACCEPT, LiveServer, Minter, call_tool, ip_with_room

BODY = json.dumps(call_tool("list_todos")).encode()


@pytest.fixture(autouse=True)
def behind_a_proxy(settings: Any) -> None:
    """Each test's flood comes from its own address (X-Forwarded-For from a trusted proxy)."""
    settings.MCPAUTH_TRUSTED_PROXIES = 1


IP: dict[str, str] = {}


def post(live: LiveServer, headers: dict[str, str], content: bytes = BODY) -> httpx2.Response:
    forwarded = {"x-forwarded-for": IP["current"]} if "current" in IP else {}
    return httpx2.post(live.url, content=content, headers={**MCP_ACCEPT, **forwarded, **headers})


@pytest.fixture(autouse=True)
def address() -> str:
    IP["current"] = ip_with_room()
    return IP["current"]


def test_a_valid_token_passes_after_a_flood_of_bad_ones(
    live: LiveServer, mint: Minter, settings: Any, idp: Any
) -> None:
    settings.MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = "20/m"
    statuses = [post(live, {"authorization": "Bearer not-a-jwt"}).status_code for _ in range(200)]
    assert statuses[:20] == [401] * 20 and set(statuses[21:]) == {429}
    for _ in range(3):  # a fresh valid token (never verified before), three times out of three
        assert post(live, {"authorization": f"Bearer {mint()}"}).status_code == 200
    cached = mint()
    for _ in range(3):
        assert post(live, {"authorization": f"Bearer {cached}"}).status_code == 200
    # bad tokens from the throttled address cost no JWKS refetch
    fetches = idp.jwks_fetches
    for _ in range(20):
        unknown = mint(headers={"kid": f"unknown-{time.monotonic_ns()}"})
        assert post(live, {"authorization": f"Bearer {unknown}"}).status_code == 429
    assert idp.jwks_fetches == fetches


FLOODS = {
    "malformed authorization": ({"authorization": "Bearer a b"}, BODY, 401),
    "bad host": ({"host": "evil.example.com"}, BODY, 403),
    "bad origin": ({"origin": "http://evil.example.com"}, BODY, 403),
    "oversize": ({}, b"x" * 1_100_000, 413),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_pre_admission_floods_do_not_fill_the_audit_table(
    live: LiveServer, settings: Any, flood: str
) -> None:
    headers, content, first = FLOODS[flood]
    settings.MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = "10/m"
    requests = 100 if flood == "oversize" else 200
    statuses = [post(live, headers, content).status_code for _ in range(requests)]
    assert statuses[:10] == [first] * 10 and set(statuses[10:]) == {429}
    rows = list(AuditEvent.objects.order_by("id").values_list("status", "error_code"))
    assert len(rows) == 11  # the budget, then one row for the refusal that spent it
    assert rows[-1] == (429, "ip_throttled")


def test_every_refusal_is_recorded_or_counted_in_a_summary(
    live: LiveServer, mint: Minter, settings: Any, address: str
) -> None:
    settings.MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = "5/2s"
    sent = 0
    for _ in range(60):
        post(live, {"host": "evil.example.com"})
        sent += 1
    time.sleep(3.2)  # every window is over, and the one-second sweep is due
    assert post(live, {"authorization": f"Bearer {mint()}"}).status_code == 200  # triggers it
    refusals = AuditEvent.objects.exclude(outcome="ok")
    summaries = refusals.filter(method="throttle/ip", error_code="ip_flood_summary")
    assert summaries.exists() and all(s.client_ip == address for s in summaries)
    suppressed = sum(int(s.error_message.split()[0]) for s in summaries)
    one_by_one = refusals.exclude(method="throttle/ip").count()
    assert one_by_one + suppressed == sent
    assert one_by_one < sent // 2  # the flood itself is not in the table row by row


def test_a_suspended_tenants_refusals_carry_the_tenant(live: LiveServer, mint: Minter) -> None:
    Tenant.objects.create(external_id="frozen", suspended=True)
    token = mint(org_id="frozen", client_id="frozen-client")
    for _ in range(3):
        resp = post(live, {"authorization": f"Bearer {token}"})
        assert resp.status_code == 403
    rows = AuditEvent.objects.filter(error_code="tenant_suspended")
    assert rows.count() == 3 and set(rows.values_list("tenant", flat=True)) == {"frozen"}
    assert set(rows.values_list("client_id", flat=True)) == {"frozen-client"}
    out = io.StringIO()
    call_command("audit_export", "--tenant", "frozen", "--format", "jsonl", stdout=out)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["error_code"] for r in exported] == ["tenant_suspended"] * 3
