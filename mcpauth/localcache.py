"""A small per-process TTL cache for hot lookups (tenants, bindings, policies, scope map).

Entries expire after ``MCPAUTH_CACHE_TTL`` seconds, so changes made through another worker are
seen within that window; changes made in this process clear the cache at once (signals).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


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
        value = loader()
        with self._lock:
            if len(self._data) >= self._maxsize:
                self._data.clear()
            self._data[key] = (now + self._ttl(), value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
