"""The pipelined Redis counter connection (``mcpauth.admission.redispipe``), against a real
Redis."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid

import pytest
import redis

from mcpauth.admission.cache import _INCR_WINDOW
from mcpauth.admission.leases import LEASE_SHARE, lease_size
from mcpauth.admission.redispipe import ScriptConnection, for_url
from tests.conftest import free_port

REDIS = "redis://127.0.0.1:6379/14"


def redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not redis_up(), reason="needs Redis on 127.0.0.1:6379")


def counter(url: str = REDIS, **options: float) -> ScriptConnection:
    target = for_url(url, {"socket_timeout": 1, "socket_connect_timeout": 1, **options})
    assert target is not None
    return ScriptConnection(target, _INCR_WINDOW)


async def test_concurrent_counts_are_exact_and_expire() -> None:
    key = f"pipe-{uuid.uuid4().hex}"
    conn = counter()
    replies = await asyncio.gather(*(conn.run(key, 30) for _ in range(200)))
    assert sorted(n for n, _added in replies) == list(range(1, 201))
    assert {added for _n, added in replies} == {1}
    sync = redis.Redis.from_url(REDIS)
    assert int(sync.get(key)) == 200 and 0 < sync.ttl(key) <= 30  # in db 14, with its TTL


async def test_a_call_arriving_while_the_connection_sets_up_waits_for_it() -> None:
    """A second request reaching a fresh worker while the first one's connection is open but
    its SCRIPT LOAD has not answered yet (seen as a rare 503 ``ratelimit_cache_down`` under
    load) waits for the set-up instead of running without the script."""
    key = f"pipe-{uuid.uuid4().hex}"
    conn = counter()
    first = asyncio.create_task(conn.run(key, 30))
    for _ in range(10_000):
        if conn._writer is not None and conn.sha is None:
            break
        await asyncio.sleep(0)
    else:
        pytest.fail("never saw the connection between open and SCRIPT LOAD")
    second = await conn.run(key, 30)
    assert sorted([(await first)[0], second[0]]) == [1, 2]


async def test_a_set_up_cut_short_does_not_wedge_later_calls() -> None:
    """The caller that connects is cancelled (its request went away) while a silent server
    holds the set-up: the calls that waited, and later ones, fail or reconnect; none hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    conn = counter(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", socket_timeout=30)
    first = asyncio.create_task(conn.run("k", 30))
    for _ in range(10_000):
        if conn._connecting is not None and conn._writer is not None:
            break
        await asyncio.sleep(0)
    waiting = asyncio.create_task(conn.run("k", 30))
    await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 5)
    listener.close()
    for sock in accepted:
        sock.close()
    conn.target = for_url(REDIS, {"socket_timeout": 1})  # type: ignore[assignment]
    assert await asyncio.wait_for(conn.run(f"pipe-{uuid.uuid4().hex}", 30), 5) == [1, 1]


async def test_recovers_after_the_server_forgets_its_scripts() -> None:
    key = f"pipe-{uuid.uuid4().hex}"
    conn = counter()
    assert await conn.run(key, 30) == [1, 1]
    redis.Redis.from_url(REDIS).script_flush()
    assert await conn.run(key, 30) == [2, 1]
    assert await conn.run(key, 30) == [3, 1]


async def test_a_closed_port_fails_fast() -> None:
    conn = counter(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionError):
        await conn.run("k", 30)


async def test_a_silent_server_times_out_then_the_next_call_reconnects() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    conn = counter(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionError):
        await conn.run("k", 30)
    assert loop.time() - started < 2
    listener.close()
    for sock in accepted:
        sock.close()
    conn.target = for_url(REDIS, {"socket_timeout": 1})  # type: ignore[assignment]
    assert await conn.run(f"pipe-{uuid.uuid4().hex}", 30) == [1, 1]


def test_only_plain_redis_urls_are_spoken() -> None:
    assert for_url("rediss://h:6380/0", {}) is None
    assert for_url("unix:///tmp/redis.sock", {}) is None
    target = for_url("redis://user:p%40ss@example:6390/3", {"socket_timeout": 2})
    assert target is not None
    assert (target.host, target.port, target.db, target.username, target.password) == (
        "example",
        6390,
        3,
        "user",
        "p@ss",
    )


async def test_calls_made_while_connecting_wait_for_the_setup() -> None:
    key = f"pipe-{uuid.uuid4().hex}"
    conn = counter()
    first = asyncio.ensure_future(conn.run(key, 30))
    while conn._writer is None:  # the socket is open; AUTH/SELECT/SCRIPT LOAD are in flight
        await asyncio.sleep(0)
    later = [asyncio.ensure_future(conn.run(key, 30)) for _ in range(20)]
    replies = await asyncio.gather(first, *later)  # none may run before the script is loaded
    assert sorted(n for n, _added in replies) == list(range(1, 22))


async def test_the_script_sizes_a_lease_against_the_shared_count() -> None:
    """Asked for up to 32 calls, Redis adds what ``lease_size`` says for the count it holds:
    1/16 of what is left, at least one, at most what was asked."""
    conn = counter()
    sync = redis.Redis.from_url(REDIS)
    for current in (0, 5, 500, 968, 985, 999, 1000, 1005):
        key = f"pipe-{uuid.uuid4().hex}"
        if current:
            sync.set(key, current, ex=30)
        added = lease_size(32, 1000, current)
        assert await conn.run(key, 30, 32, 1000, LEASE_SHARE) == [current + added, added]
        assert 0 < sync.ttl(key) <= 30
    assert [lease_size(32, 1000, c) for c in (0, 500, 968, 985, 999, 1005)] == [32, 31, 2, 1, 1, 1]
