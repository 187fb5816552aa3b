"""A small per-process TTL cache for hot lookups (tenants, bindings, policies, scope map).

Entries expire after ``MCPAUTH_CACHE_TTL`` seconds, so changes made through another worker are
seen within that window; changes made in this process clear the cache at once (signals).

:func:`cache_only` marks a block that must not do I/O (admission on the event loop): inside it,
a lookup that would have to load (a miss, an expired entry) raises :class:`CacheMiss`, and so
does :func:`require_io`, so the caller can redo the work where I/O is allowed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

V = TypeVar("V")
_cache_only: ContextVar[bool] = ContextVar("mcpauth_cache_only", default=False)


class CacheMiss(Exception):
    """Raised inside :func:`cache_only` where the work would need I/O."""


@contextmanager
def cache_only() -> Iterator[None]:
    token = _cache_only.set(True)
    try:
        yield
    finally:
        _cache_only.reset(token)


def cache_only_active() -> bool:
    """Whether the caller is inside :func:`cache_only`."""
    return _cache_only.get()


def require_io() -> None:
    """Call before I/O that a cache could not spare (raises inside :func:`cache_only`)."""
    if _cache_only.get():
        raise CacheMiss


class TTLCache(Generic[V]):
    def __init__(self, ttl: Callable[[], float], maxsize: int = 10_000) -> None:
        self._ttl = ttl
        self._maxsize = maxsize
        self._data: dict[Hashable, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, loader: Callable[[], V]) -> V:
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        require_io()
        value = loader()
        with self._lock:
            if len(self._data) >= self._maxsize:
                self._data.clear()
            self._data[key] = (now + self._ttl(), value)
        return value

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            if len(self._data) >= self._maxsize:
                self._data.clear()
            self._data[key] = (time.monotonic() + self._ttl(), value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
