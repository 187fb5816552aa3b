"""Admission on the event loop: a warm call skips the thread hop and decides exactly alike."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

import mcpauth.edge.pipeline
from audit.models import AuditEvent
from tests.conftest import MCP_ACCEPT, LiveServer, Minter, call_tool, client_id_with_room


@pytest.fixture
def thread_admissions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every admission that took the worker-thread path, by JSON-RPC method."""
    seen: list[str] = []
    original = mcpauth.edge.pipeline.admit

    def counting(ctx: Any, raw: Any, conf: Any) -> Any:
        seen.append(ctx.method)
        return original(ctx, raw, conf)

    monkeypatch.setattr(mcpauth.edge.pipeline, "admit", counting)
    return seen


def post(live: LiveServer, token: str, body: dict[str, Any]) -> httpx2.Response:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    return httpx2.post(live.url, json=body, headers=headers)


def test_a_warm_call_is_admitted_on_the_loop(
    live: LiveServer, mint: Minter, thread_admissions: list[str]
) -> None:
    token = mint()
    for _ in range(3):
        assert post(live, token, call_tool("list_todos")).status_code == 200
    # cold: the token, its tenant and the scope map were loaded in a thread; then all cached
    assert thread_admissions == ["tools/call"]
    assert AuditEvent.objects.filter(outcome="ok").count() == 3


def test_the_loop_counts_and_refuses_exactly_like_the_thread(
    live: LiveServer, mint: Minter, settings: Any, thread_admissions: list[str]
) -> None:
    settings.MCPAUTH_RATE_LIMIT = "3/m"
    token = mint(client_id=client_id_with_room("loop-limit"))
    statuses = [post(live, token, call_tool("list_todos")).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert len(thread_admissions) == 1
    limited = post(live, token, call_tool("list_todos"))
    assert limited.headers["retry-after"] and limited.headers["x-ratelimit-remaining"] == "0"


def test_step_up_challenge_from_the_loop_path(
    live: LiveServer, mint: Minter, thread_admissions: list[str]
) -> None:
    token = mint(scope="todo:read")
    assert post(live, token, call_tool("list_todos")).status_code == 200
    resp = post(live, token, call_tool("create_todo", {"title": "no"}))
    assert resp.status_code == 403
    challenge = resp.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="todo:write"' in challenge
    assert thread_admissions == ["tools/call"]  # the refusal itself was decided on the loop
    assert list(AuditEvent.objects.order_by("id").values_list("outcome", flat=True)) == [
        "ok",
        "denied",
    ]


def test_an_expired_cached_token_is_refused(
    live: LiveServer, mint: Minter, thread_admissions: list[str]
) -> None:
    import time

    token = mint(ttl=-25)  # still inside the 30 s leeway: valid now, expired in ~6 s
    assert post(live, token, call_tool("list_todos")).status_code == 200
    time.sleep(6)
    resp = post(live, token, call_tool("list_todos"))
    assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert thread_admissions == ["tools/call", "tools/call"]  # a refusal goes to the thread


def test_a_policy_cache_cleared_during_admission_is_no_500(
    live: LiveServer, mint: Minter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config change clears the policy cache between the loop's check and its count (another
    thread's revocation check does that): the call is still admitted, counted once."""
    import mcpauth.admission.ratelimit

    token = mint(client_id=client_id_with_room("cleared-mid-admission"))
    assert post(live, token, call_tool("list_todos")).status_code == 200  # warm every cache
    original = mcpauth.admission.ratelimit.rate_for

    def then_cleared(principal: Any) -> Any:
        rated = original(principal)
        mcpauth.admission.ratelimit.clear_policies()  # as a concurrent config change would
        return rated

    monkeypatch.setattr(mcpauth.admission.ratelimit, "rate_for", then_cleared)
    first = post(live, token, call_tool("list_todos"))
    second = post(live, token, call_tool("list_todos"))
    assert (first.status_code, second.status_code) == (200, 200), first.text
    assert first.json()["result"]["isError"] is False
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in (first, second)]
    assert remaining[0] - remaining[1] == 1
    assert AuditEvent.objects.filter(outcome="ok").count() == 3
