"""Django's Redis cache, tuned for the per-request rate-limit counter.

Differences from ``django.core.cache.backends.redis.RedisCache``:

* **One connection pool per process.** Django's cache handler keeps cache objects per async
  context, so code running under ``sync_to_async`` gets a fresh ``RedisCache`` (and a fresh
  connection pool, and a new TCP connection) for every request. Here every instance with the
  same servers and options shares one client and its pool.
* **One ``redis.Redis`` object per pool**, instead of a new one per command.
* **A one-round-trip window counter** (``count``: ``INCRBY``, plus ``EXPIRE`` when new), which
  ``mcpauth.admission.ratelimit`` uses with django-ratelimit's own keys and windows; it adds
  one call, or a lease of several sized against the shared count (``mcpauth.admission.leases``).
* **An async window counter** (``acount``) for admission on the event loop
  (``mcpauth.admission.gate``), with the same script and keys: a pipelined connection per event
  loop (``mcpauth.admission.redispipe``), or redis-py's asyncio client for URLs that one does
  not speak.
* **One round trip per ``incr``.** Django checks ``EXISTS`` and then ``INCRBY``; a Lua script
  does both atomically with the same contract (``ValueError`` for a missing key), which
  django-ratelimit's ``get_usage`` relies on.
"""

from __future__ import annotations

import threading
import weakref
from asyncio import AbstractEventLoop, get_running_loop
from typing import Any

import redis.asyncio as aredis
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from django.utils.functional import cached_property

from mcpauth.admission import redispipe
from mcpauth.admission.leases import LEASE_SHARE

_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return nil
"""

#: KEYS[1] a window's counter; ARGV: its time to live, the most calls to add (default 1), the
#: limit and the share (``mcpauth.admission.leases.lease_size``, which this mirrors: the size of
#: a lease is decided here, against the count every worker shares, not a worker's last view of
#: it). Returns ``{count after, calls added}``.
_INCR_WINDOW = """
local most = tonumber(ARGV[2] or '1')
local by = 1
if most > 1 then
  local left = tonumber(ARGV[3]) - tonumber(redis.call('GET', KEYS[1]) or '0')
  by = math.max(1, math.min(most, math.floor(left / tonumber(ARGV[4]))))
end
local n = redis.call('INCRBY', KEYS[1], by)
if n == by then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, by}
"""


def _script_args(ttl: int, most: int, limit: int) -> tuple[int, ...]:
    return (ttl, most, limit, LEASE_SHARE) if most > 1 else (ttl,)


def _pair(reply: Any) -> tuple[int, int]:
    count, added = reply
    return int(count), int(added)


class FastIncrRedisCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._clients: dict[int, Any] = {}
        self._scripts: dict[str, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        # Django builds a new redis.Redis per command (~170 dict writes for its callbacks);
        # one per pool is enough: redis.Redis is thread-safe and the pool does the work.
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client

    def _run(self, source: str, key: Any, *args: int) -> Any:
        client = self.get_client(key, write=True)
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = client.register_script(source)
        return script(keys=[key], args=list(args), client=client)

    def incr(self, key: Any, delta: int) -> int:
        value = self._run(_INCR_EXISTING, key, delta)
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return int(value)

    def count(self, key: Any, ttl: int, most: int = 1, limit: int = 0) -> tuple[int, int]:
        """Add one call, or a lease of up to ``most`` (sized against ``limit``), to a window
        counter, creating it with ``ttl`` seconds to live: ``(count after, calls added)``."""
        return _pair(self._run(_INCR_WINDOW, key, *_script_args(ttl, most, limit)))


_clients: dict[tuple[tuple[str, ...], str], FastIncrRedisCacheClient] = {}
_clients_lock = threading.Lock()


_async_clients: weakref.WeakKeyDictionary[AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


class RedisCache(DjangoRedisCache):
    @cached_property
    def _cache(self) -> FastIncrRedisCacheClient:
        servers: list[str] = self._servers  # type: ignore[attr-defined]
        options: dict[str, Any] = self._options  # type: ignore[attr-defined]
        key = (tuple(servers), repr(sorted(options.items())))
        client = _clients.get(key)
        if client is None:
            with _clients_lock:
                client = _clients.get(key)
                if client is None:
                    client = _clients[key] = FastIncrRedisCacheClient(servers, **options)
        return client

    def count(self, key: str, ttl: int, most: int = 1, limit: int = 0) -> tuple[int, int]:
        """One round trip: add one call, or a lease of up to ``most`` calls sized against
        ``limit`` (``mcpauth.admission.leases``), to a window counter: ``(count after, calls
        added)``."""
        return self._cache.count(self.make_and_validate_key(key), ttl, most, limit)

    def _async_counter(self) -> Any:
        servers: list[str] = self._servers  # type: ignore[attr-defined]
        options: dict[str, Any] = self._options  # type: ignore[attr-defined]
        per_loop = _async_clients.setdefault(get_running_loop(), {})
        ident = (tuple(servers), repr(sorted(options.items())))
        counter = per_loop.get(ident)
        if counter is None:
            target = redispipe.for_url(servers[0], options)
            if target is not None:
                counter = redispipe.ScriptConnection(target, _INCR_WINDOW).run
            else:
                timeouts = ("socket_timeout", "socket_connect_timeout")
                kwargs = {k: v for k, v in options.items() if k in timeouts}
                script = aredis.Redis.from_url(servers[0], **kwargs).register_script(_INCR_WINDOW)

                async def counter(key: str, *args: int) -> Any:
                    return await script(keys=[key], args=list(args))

            per_loop[ident] = counter
        return counter

    async def acount(self, key: str, ttl: int, most: int = 1, limit: int = 0) -> tuple[int, int]:
        """:meth:`count` for the event loop: the same script, keys and result."""
        args = _script_args(ttl, most, limit)
        return _pair(await self._async_counter()(self.make_and_validate_key(key), *args))
