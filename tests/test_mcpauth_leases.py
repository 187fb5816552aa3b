"""Rate-limit counts leased in blocks (``mcpauth.admission.leases``): never over the limit,
exact near it, one Redis round trip for many calls. The arithmetic against a shared counter, then
the real thing: Redis, the sync and async counting paths, and two server processes."""

from __future__ import annotations

import asyncio
import os
import random

import httpx2
import pytest
import redis
from django.core.cache import caches

from audit.models import AuditEvent
from mcpauth.admission import ratelimit
from mcpauth.admission.leases import LEASE_SHARE, Leases
from mcpauth.exceptions import RateLimited, ServiceUnavailable
from mcpauth.values import Principal, TenantRef
from tests.conftest import MCP_ACCEPT, call_tool, client_id_with_room, free_port
from tests.servers import server_env, uvicorn_process

WINDOW = 2_000_000_000  # a window end far ahead: the arithmetic does not look at the clock


class Worker:
    """One process's leases, counting against ``shared`` (what Redis's ``INCRBY`` does)."""

    def __init__(self, shared: list[int], cap: int) -> None:
        self.leases = Leases()
        self.shared = shared
        self.cap = cap
        self.round_trips = 0

    def call(self, limit: int) -> int:
        """The count one call reports (over ``limit``: refused)."""
        count = self.leases.take("k", limit)
        if count is not None:
            return count
        asked = self.leases.size("k", limit, self.cap)
        self.shared[0] += asked
        self.round_trips += 1
        return self.leases.counted("k", limit, WINDOW, asked, self.shared[0])


def run(limit: int, workers: int, calls: int, cap: int = 32, seed: int = 0) -> list[Worker]:
    shared = [0]
    pool = [Worker(shared, cap) for _ in range(workers)]
    rng = random.Random(seed)
    for _ in range(calls):
        rng.choice(pool).call(limit)
    return pool


def admitted(limit: int, workers: int, calls: int, cap: int = 32, seed: int = 0) -> int:
    shared = [0]
    pool = [Worker(shared, cap) for _ in range(workers)]
    rng = random.Random(seed)
    return sum(rng.choice(pool).call(limit) <= limit for _ in range(calls))


@pytest.mark.parametrize("limit", [1, 10, 31, 100, 1000, 100_000])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_never_over_the_limit_and_little_lost(limit: int, workers: int) -> None:
    for seed in range(5):
        got = admitted(limit, workers, calls=min(3 * limit, limit + 3000), seed=seed)
        assert got <= limit
        # calls a worker leased and never used: at most one lease per other worker
        assert got >= limit - (workers - 1) * min(32, limit // LEASE_SHARE), (seed, got)


def test_one_worker_loses_nothing_and_reports_every_count() -> None:
    shared = [0]
    worker = Worker(shared, cap=32)
    counts = [worker.call(1000) for _ in range(1200)]
    assert counts[:1000] == list(range(1, 1001))  # RateLimit headers fall by one per call
    assert all(c > 1000 for c in counts[1000:])
    assert worker.round_trips < 1200 / 3


def test_near_the_limit_every_call_is_counted_alone() -> None:
    shared = [0]
    worker = Worker(shared, cap=32)
    trips = []
    for _ in range(1000):
        before = worker.round_trips
        worker.call(1000)
        trips.append(worker.round_trips - before)
    assert trips[-LEASE_SHARE:] == [1] * LEASE_SHARE  # under 16 left: leases of one call
    assert shared[0] == 1000  # and nothing was leased beyond what was used


def test_small_limits_and_cap_one_count_every_call() -> None:
    (small,) = run(limit=2 * LEASE_SHARE - 1, workers=1, calls=40)
    assert small.round_trips == 40
    (capped,) = run(limit=100_000, workers=1, calls=40, cap=1)
    assert capped.round_trips == 40


def test_a_big_window_is_counted_in_leases_of_the_cap() -> None:
    (worker,) = run(limit=100_000, workers=1, calls=3200)
    assert worker.round_trips == 1 + 3199 // 32 + 1  # the first call alone, then 32 at a time


def test_a_refused_count_leases_nothing_and_stays_refused() -> None:
    shared = [95]  # other workers used 95 of 100
    worker = Worker(shared, cap=32)
    assert [worker.call(100) for _ in range(5)] == [96, 97, 98, 99, 100]
    assert worker.call(100) == 101
    assert worker.call(100) == 102
    assert worker.leases.take("k", 100) is None


def test_a_partly_granted_lease_admits_only_what_fitted() -> None:
    leases = Leases()
    assert leases.counted("k", 100, WINDOW, 1, 1) == 1
    # another worker took 96 meanwhile; this one asks for 6 and gets the 3 left
    assert leases.counted("k", 100, WINDOW, 6, 103) == 98
    assert [leases.take("k", 100) for _ in range(3)] == [99, 100, None]


def test_one_lease_at_a_time_while_calls_run_concurrently() -> None:
    leases = Leases()
    leases.counted("k", 10_000, WINDOW, 1, 1)
    first = leases.size("k", 10_000, 32)
    assert first == 32
    # while that lease is on its way, concurrent calls count one each
    assert [leases.size("k", 10_000, 32) for _ in range(3)] == [1, 1, 1]
    assert leases.counted("k", 10_000, WINDOW, 1, 2) == 2
    assert leases.size("k", 10_000, 32) == 1
    leases.counted("k", 10_000, WINDOW, 32, 34)
    assert leases.size("k", 10_000, 32) == 32  # answered: the next may lease again
    leases.failed("k", 32)
    assert leases.size("k", 10_000, 32) == 32  # a count that failed frees the next one too


# --- against Redis --------------------------------------------------------------------------


def _principal(client_id: str) -> Principal:
    return Principal(
        client_id=client_id,
        subject="s",
        tenant=TenantRef(1, "acme"),
        scopes=frozenset({"todo:read"}),
        permissions=frozenset(),
        token_id="t",
    )


def _script_calls() -> int:
    """Lua script calls Redis has served (the rate-limit counter's round trips)."""
    url = os.environ["REDIS_URL"]
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def _counter(principal: Principal, rate: str) -> int:
    key = ratelimit._window(ratelimit._group(principal), principal.client_id, rate)[0]
    return int(caches["ratelimit"].get(key))


@pytest.mark.needs_shared_services
def test_sync_counts_lease_in_redis(db, settings) -> None:
    settings.MCPAUTH_RATE_LIMIT = "100000/m"
    principal = _principal(client_id_with_room("lease-sync"))
    before = _script_calls()
    usages = [ratelimit.hit(principal) for _ in range(100)]
    trips = _script_calls() - before
    assert trips <= 1 + 99 // 32 + 1
    remaining = [u.remaining for u in usages if u is not None]
    assert remaining == list(range(99_999, 99_899, -1))
    assert 100 <= _counter(principal, "100000/m") <= 100 + 32


@pytest.mark.needs_shared_services
def test_async_counts_lease_and_stay_exact_at_the_limit(db, settings) -> None:
    settings.MCPAUTH_RATE_LIMIT = "600/m"
    principal = _principal(client_id_with_room("lease-async"))
    rated = ratelimit.rate_for(principal)  # the policy lookup reads the database: here

    async def burst() -> list[bool]:
        async def one() -> bool:
            try:
                await ratelimit.ahit(principal, rated)
            except RateLimited:
                return False
            return True

        results: list[bool] = []
        for _ in range(8):  # concurrent calls on one loop, as admission on the loop makes them
            results += await asyncio.gather(*(one() for _ in range(100)))
        return results

    before = _script_calls()
    results = asyncio.run(burst())
    trips = _script_calls() - before
    assert sum(results) <= 600
    assert sum(results) >= 600 - 600 // LEASE_SHARE
    assert results.count(False) == 800 - sum(results)
    # the first 100 calls of the window count alone (nothing known yet), then leases: one on
    # its way at a time, the concurrent calls waiting for it; each refusal is one round trip
    assert trips - results.count(False) < 100 + (sum(results) - 100) / 4, trips


@pytest.mark.needs_shared_services
def test_with_redis_gone_a_worker_admits_only_what_it_leased(db, settings) -> None:
    settings.MCPAUTH_RATE_LIMIT = "100000/m"
    principal = _principal(client_id_with_room("lease-down"))
    ratelimit.hit(principal)  # the window's first call, counted alone
    ratelimit.hit(principal)  # takes a lease of 32: this call and 31 more
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "mcpauth.admission.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        },
    }
    for _ in range(31):
        assert ratelimit.hit(principal) is not None
    with pytest.raises(ServiceUnavailable):
        ratelimit.hit(principal)


def _post(base: str, token: str) -> httpx2.Response:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    return httpx2.post(f"{base}/mcp", json=call_tool("list_todos"), headers=headers)


@pytest.mark.needs_shared_services
def test_two_server_processes_share_a_leased_limit(live, mint, idp, tmp_path) -> None:
    """Two workers, a fresh connection per request, calls alternating: never over the limit,
    at most one lease short of it, and fewer round trips than calls."""
    env = server_env(idp.issuer, str(tmp_path), MCPAUTH_RATE_LIMIT="200/m")
    with uvicorn_process(free_port(), env) as a, uvicorn_process(free_port(), env) as b:
        client_id = client_id_with_room("leased-client")
        token = mint(client_id=client_id)
        before = _script_calls()
        statuses = [_post(base, token).status_code for _ in range(120) for base in (a, b)]
        trips = _script_calls() - before
    ok, refused = statuses.count(200), statuses.count(429)
    assert ok + refused == 240
    assert 200 - 200 // LEASE_SHARE <= ok <= 200
    assert trips - refused < ok / 2  # each refusal is one round trip; admissions far fewer
    assert AuditEvent.objects.filter(client_id=client_id, outcome="ok").count() == ok
    rows = AuditEvent.objects.filter(client_id=client_id, outcome="rate_limited")
    assert rows.count() == refused


def test_an_unusable_lease_setting_is_e017_and_counts_every_call(settings) -> None:
    from mcpauth.checks import check_configuration
    from mcpauth.conf import get_settings

    for bad in (0, -3, "32", 2.5, True):
        settings.MCPAUTH_RATE_LIMIT_LEASE = bad
        assert "mcpauth.E017" in {m.id for m in check_configuration()}, bad
        assert get_settings().rate_limit_lease == 1
    settings.MCPAUTH_RATE_LIMIT_LEASE = 8
    assert "mcpauth.E017" not in {m.id for m in check_configuration()}
    assert get_settings().rate_limit_lease == 8
