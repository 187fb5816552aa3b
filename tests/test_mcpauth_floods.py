"""The per-IP refusal budget's bookkeeping (mcpauth.admission.floods), in process."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mcpauth.admission import floods


def fresh_ip() -> str:
    return f"198.51.100.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:6]}"  # unique per test


@pytest.mark.django_db
def test_throttles_dropped_for_room_still_get_their_summary(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = "1/m"
    monkeypatch.setattr(floods, "MAX_TRACKED", 2)
    a, b, c = fresh_ip(), fresh_ip(), fresh_ip()
    verdicts = {ip: [floods.charge(ip).value for _ in range(3)] for ip in (a, b)}
    assert verdicts == {ip: ["record", "start", "suppress"] for ip in (a, b)}
    assert [floods.charge(c).value for _ in range(2)] == ["record", "start"]  # table full
    monkeypatch.setattr(floods, "_swept_at", float("-inf"))
    summaries = {s.ip: s.suppressed for s in floods.due_summaries()}
    assert summaries == {a: 1, b: 1}  # nothing they suppressed is lost
    assert floods.throttled(c) is not None and floods.throttled(a) is None


@pytest.mark.django_db
def test_concurrent_refusals_over_the_budget_start_one_throttle(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusals that reach the count together (slow bodies timing out at once) start one
    throttle: one audited ``ip_throttled``, the rest suppressed and counted in its summary."""
    settings.MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = "1/m"
    ip = fresh_ip()
    assert floods.charge(ip) is floods.Verdict.RECORD
    together = threading.Barrier(8, timeout=10)
    count = floods.ratelimit._usage

    def counted_together(*args: Any, **kwargs: Any) -> Any:
        together.wait()  # all eight have passed the in-process check before any is counted
        return count(*args, **kwargs)

    monkeypatch.setattr(floods.ratelimit, "_usage", counted_together)
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = [v.value for v in pool.map(lambda _: floods.charge(ip), range(8))]
    assert sorted(verdicts) == ["start"] + ["suppress"] * 7
    active = floods.throttled(ip)
    assert active is not None and active.suppressed == 7
