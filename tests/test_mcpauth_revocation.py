"""The shared configuration version (mcpauth.caching.revocation) against the real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches

from mcpauth.caching import revocation

pytestmark = [pytest.mark.needs_shared_services]


@pytest.fixture
def seen_clears(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[list[int]]:
    clears: list[int] = []
    monkeypatch.setattr(revocation, "_clearers", [lambda: clears.append(1)])
    settings.MCPAUTH_REVOCATION_CHECK_INTERVAL = 0.0
    caches["default"].delete(revocation.VERSION_KEY)
    revocation.reset()
    yield clears
    caches["default"].delete(revocation.VERSION_KEY)
    revocation.reset()


def other_worker_changes() -> None:
    """What another process's committed change does to the shared counter."""
    revocation._bump_now()


def test_a_change_after_redis_lost_the_counter_still_reaches_this_worker(seen_clears):
    assert revocation._shared(), "runs with REDIS_URL (the default cache in Redis)"
    other_worker_changes()
    revocation.check()  # this worker sees the first version
    first = caches["default"].get(revocation.VERSION_KEY)
    assert isinstance(first, int)
    seen_clears.clear()
    caches["default"].delete(revocation.VERSION_KEY)  # Redis restarted or evicted the key
    other_worker_changes()  # a change made before this worker looked again
    assert caches["default"].get(revocation.VERSION_KEY) != first
    revocation.check()
    assert seen_clears, "the change was missed: the new counter repeated the old value"


def test_counter_increments_between_changes(seen_clears):
    other_worker_changes()
    before = caches["default"].get(revocation.VERSION_KEY)
    other_worker_changes()
    assert caches["default"].get(revocation.VERSION_KEY) == before + 1
