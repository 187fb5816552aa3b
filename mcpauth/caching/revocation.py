"""Configuration changes reach every worker at once: tenants, bindings, policies, scope maps.

Workers cache tenants, client bindings, client policies and the scope map
(``mcpauth.identity.tenancy``, ``mcpauth.admission.ratelimit``, ``mcpauth.identity.scopes``). A
change made in one process clears that process's caches at once (model signals); for every other
worker:

* **with a shared cache** (``REDIS_URL``): every change bumps a version counter in it when its
  transaction commits, and each worker compares the counter with the one it last saw at most
  every ``MCPAUTH_REVOCATION_CHECK_INTERVAL`` seconds (0.5): a changed counter clears its
  caches. A suspension, a blocked client or a revoked scope is enforced by every worker within
  about half a second (``tests/test_e2e_revocation.py`` measures it across 2 workers);
* **without one** (the in-process LocMem cache of the quickstart), each worker's cache entries
  expire after ``MCPAUTH_CACHE_TTL`` seconds: that single TTL is the bound.

Changes are caught from the admin, the management commands and the ORM alike: ``save()`` and
``delete()`` through the models' signals, and ``QuerySet.update()``/``delete()``/``bulk_*`` through
the models' queryset (:class:`mcpauth.models.ConfigQuerySet`). Raw SQL is not seen until the TTL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.db import transaction

from mcpauth.caching.localcache import require_io
from mcpauth.conf import get_settings

log = logging.getLogger(__name__)

VERSION_KEY = "mcpauth:config-version"
_clearers: list[Callable[[], None]] = []
_lock = threading.Lock()
_seen: dict[str, Any] = {"version": None, "checked_at": float("-inf")}


def on_change(clear: Callable[[], None]) -> Callable[[], None]:
    """Register a process-local cache clearer (called on every configuration change)."""
    _clearers.append(clear)
    return clear


def clear_local() -> None:
    for clear in _clearers:
        clear()


def _shared() -> bool:
    backend = str(caches["default"].__class__.__module__)
    return "locmem" not in backend and "dummy" not in backend


def _bump_now() -> None:
    clear_local()
    if not _shared():
        return
    cache = caches["default"]
    try:
        try:
            cache.incr(VERSION_KEY)
        except ValueError:
            # a new counter (first change, or Redis lost the key) starts from the clock, not
            # from 1: a worker that last saw an earlier counter's value must not see it again
            if not cache.add(VERSION_KEY, time.time_ns() // 1000, timeout=None):
                cache.incr(VERSION_KEY)
    except Exception:
        # the change itself stands; other workers then see it within MCPAUTH_CACHE_TTL
        log.warning("could not announce a configuration change to other workers", exc_info=True)


def changed(**_: Any) -> None:
    """A configuration row changed: clear here now, and tell every worker when it commits."""
    clear_local()
    transaction.on_commit(_bump_now)


def check() -> None:
    """Clear this worker's caches when another process changed the configuration.

    Reads the shared counter at most every ``MCPAUTH_REVOCATION_CHECK_INTERVAL`` seconds; inside
    ``cache_only()`` a due read raises ``CacheMiss`` (the caller redoes its work in a thread).
    """
    conf = get_settings()
    now = time.monotonic()
    if now - _seen["checked_at"] < conf.revocation_check_interval or not _shared():
        return
    require_io()
    with _lock:
        if now - _seen["checked_at"] < conf.revocation_check_interval:
            return
        try:
            version = caches["default"].get(VERSION_KEY)
        except Exception:
            log.warning("could not read the configuration version", exc_info=True)
            return  # caches keep their TTL as the bound
        if version != _seen["version"]:
            if _seen["version"] is not None or version is not None:
                clear_local()
            _seen["version"] = version
        _seen["checked_at"] = now


def reset() -> None:
    """Forget what was seen (tests)."""
    _seen.update(version=None, checked_at=float("-inf"))
