"""Rate-limit counts leased in blocks (``mcpauth.admission.leases``): never over the limit,
exact near it, one Redis round trip for many calls. The arithmetic against a shared counter, then
the real thing: Redis, the sync and async counting paths, and two server processes."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import httpx2
import pytest
import redis
from django.core.cache import caches

from audit.models import AuditEvent
from mcpauth.admission import ratelimit
from mcpauth.admission.leases import LEASE_SHARE, Leases, lease_size
from mcpauth.exceptions import RateLimited, ServiceUnavailable
from mcpauth.values import Principal, TenantRef
from tests.conftest import MCP_ACCEPT, call_tool, client_id_with_room, free_port
from tests.servers import server_env, uvicorn_process

WINDOW = 2_000_000_000  # a window end far ahead: the arithmetic does not look at the clock


class Worker:
    """One process's leases, counting against ``shared`` (what the Redis script does: it sizes
    the lease against the shared count and adds it)."""

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
        added = lease_size(asked, limit, self.shared[0])
        self.shared[0] += added
        self.round_trips += 1
        return self.leases.counted("k", limit, WINDOW, asked, added, self.shared[0])

    def unused(self) -> int:
        return sum(left for left, _seen in self.leases.snapshot().values())


def run(limit: int, workers: int, calls: int, cap: int = 32, seed: int = 0) -> list[Worker]:
    shared = [0]
    pool = [Worker(shared, cap) for _ in range(workers)]
    rng = random.Random(seed)
    for _ in range(calls):
        rng.choice(pool).call(limit)
    return pool


@pytest.mark.parametrize("limit", [1, 10, 31, 100, 1000, 100_000])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_never_over_the_limit_and_every_counted_call_admitted_or_held(
    limit: int, workers: int
) -> None:
    for seed in range(5):
        for calls in (limit // 2, limit, limit + 50):
            shared = [0]
            pool = [Worker(shared, 32) for _ in range(workers)]
            rng = random.Random(seed)
            got = sum(rng.choice(pool).call(limit) <= limit for _ in range(calls))
            assert got <= limit
            # every call counted in Redis under the limit was admitted, or is still held in a
            # worker's lease (nothing lost, nothing invented) ...
            held = sum(w.unused() for w in pool)
            assert got + held == min(shared[0], limit), (seed, calls, got, held)
            # ... and each worker holds at most one lease, of at most 1/16 of the window
            assert all(w.unused() < max(1, min(32, limit // LEASE_SHARE)) for w in pool)


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


def test_a_lease_is_sized_against_the_shared_count_not_a_stale_view() -> None:
    """A worker that last saw an empty window asks for a big lease after others have nearly
    filled it: Redis grants what the shared count allows, so the worker strands little."""
    shared = [0]
    idle, busy = Worker(shared, 32), Worker(shared, 32)
    idle.call(1000)  # its view: 1 of 1000 used
    while shared[0] < 961:
        busy.call(1000)
    assert idle.call(1000) <= 1000  # asks for up to 32 ...
    assert idle.unused() < (1000 - 961) // LEASE_SHARE  # ... and holds under 1/16 of 39
    assert sum(busy.call(1000) <= 1000 for _ in range(100)) >= 1000 - 961 - 2


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
    assert leases.counted("k", 100, WINDOW, 1, 1, 1) == 1
    # another worker took 91 meanwhile (and raced this lease: 6 added, 3 of them fit)
    assert leases.counted("k", 100, WINDOW, 32, 6, 103) == 98
    assert [leases.take("k", 100) for _ in range(3)] == [99, 100, None]


def test_one_lease_at_a_time_while_calls_run_concurrently() -> None:
    leases = Leases()
    leases.counted("k", 10_000, WINDOW, 1, 1, 1)
    first = leases.size("k", 10_000, 32)
    assert first == 32
    # while that lease is on its way, concurrent calls count one each
    assert [leases.size("k", 10_000, 32) for _ in range(3)] == [1, 1, 1]
    assert leases.counted("k", 10_000, WINDOW, 1, 1, 2) == 2
    assert leases.size("k", 10_000, 32) == 1
    leases.counted("k", 10_000, WINDOW, 32, 32, 34)
    assert leases.size("k", 10_000, 32) == 1  # it arrived: take from it before asking again
    for _ in range(31):
        assert leases.take("k", 10_000) is not None
    assert leases.size("k", 10_000, 32) == 32  # used up: the next may lease again


def test_a_failed_count_wakes_its_waiters_and_calls_count_alone_until_one_succeeds() -> None:
    async def scenario() -> None:
        leases = Leases()
        loop = asyncio.get_running_loop()
        leases.counted("k", 10_000, WINDOW, 1, 1, 1)
        assert leases.size("k", 10_000, 32, loop) == 32
        arrival = leases.arriving("k", loop)
        assert arrival is not None and not arrival.done()
        leases.failed("k", 32)
        assert arrival.done()  # the waiting calls go on at once ...
        assert leases.arriving("k", loop) is None
        # ... and each counts on its own (concurrently, not one lease attempt after another)
        assert [leases.size("k", 10_000, 32, loop) for _ in range(3)] == [1, 1, 1]
        assert leases.arriving("k", loop) is None
        leases.counted("k", 10_000, WINDOW, 1, 1, 2)  # Redis answers again
        assert leases.size("k", 10_000, 32, loop) == 32
        leases.failed("k", 32, cancelled=True)  # a cancelled asker: Redis is not failing
        assert leases.size("k", 10_000, 32, loop) == 32

    asyncio.run(scenario())


def test_a_lease_on_its_way_survives_pruning_and_clearing() -> None:
    """Its waiters are woken by its answer even when the table was pruned or cleared while it
    was on its way (a dropped lease would leave them waiting forever)."""

    async def scenario() -> None:
        leases = Leases()
        loop = asyncio.get_running_loop()
        ended = 1_000_000  # a window long over
        leases.counted("k", 10_000, ended, 1, 1, 1)
        assert leases.size("k", 10_000, 32, loop) == 32
        arrival = leases.arriving("k", loop)
        assert arrival is not None
        for i in range(1100):  # enough keys for a prune, all of ended windows
            leases.counted(f"other-{i}", 10, ended, 1, 1, 1)
        assert "k" in leases.snapshot() and len(leases.snapshot()) < 1100
        leases.clear()
        assert list(leases.snapshot()) == ["k"]
        assert leases.counted("k", 10_000, ended, 32, 32, 33) == 2
        assert arrival.done()
        assert leases.arriving("k", loop) is None

    asyncio.run(scenario())


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


@pytest.mark.needs_shared_services
def test_a_stalled_redis_fails_the_waiting_calls_together_not_in_turn(db, settings) -> None:
    """Redis stops answering while a lease is on its way and many calls of one client wait for
    it on the worker's loop: they all fail closed within a couple of timeouts (each waiting
    call asking for a lease of its own in turn would take one timeout per call)."""
    settings.MCPAUTH_RATE_LIMIT = "100000/m"
    principal = _principal(client_id_with_room("lease-stall"))
    rated = ratelimit.rate_for(principal)
    ratelimit.hit(principal)  # the window's first call: counted alone; now leases are asked for
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        settings.CACHES = {
            **settings.CACHES,
            "ratelimit": {
                "BACKEND": "mcpauth.admission.cache.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
                "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
            },
        }

        async def burst() -> list[BaseException | None]:
            async def one() -> BaseException | None:
                try:
                    await ratelimit.ahit(principal, rated)
                except ServiceUnavailable as exc:
                    return exc
                return None

            return await asyncio.gather(*(one() for _ in range(20)))

        started = time.monotonic()
        results = asyncio.run(burst())
        elapsed = time.monotonic() - started
    assert all(isinstance(r, ServiceUnavailable) for r in results)  # failed closed, every one
    assert elapsed < 4 * 0.5, elapsed  # not 20 timeouts one after another


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
