"""Rate-limit counts leased in blocks: a worker takes several of a window's calls at once.

Counting every call in Redis costs a round trip per call; on this project's benchmark that is
about 0.2 ms of CPU per call, mostly the kernel's side of it (the wake-ups of two processes),
whatever the client is. A worker that has seen that plenty of a client's window is left asks
for a *lease* instead: in the one round trip it would have made anyway, Redis adds ``n`` calls
to the shared counter, and the worker admits the call and the client's next ``n - 1`` calls of
that window itself.

What still holds:

* **Never more calls than the limit in a window, across every worker**: each admitted call was
  added to the shared counter before it was admitted (a lease adds its calls when it is taken),
  and a lease is granted only as far as the counter had room.
* **A lease is sized by Redis, against the count every worker shares** (the counting script,
  :func:`lease_size`): at most ``1/LEASE_SHARE`` of what the window has left, and at most
  ``MCPAUTH_RATE_LIMIT_LEASE``, so it shrinks to one call as the window fills; with fewer than
  ``2 * LEASE_SHARE`` calls left every call is counted on its own. A worker asks for one only
  when its own last view says plenty is left; the first call of a window in a worker, and every
  call of a limit under ``2 * LEASE_SHARE``, is counted alone, exactly as before.
* **A refusal is as before**: the client's count is over its limit in Redis.
* **One lease on its way per worker and counter**: while it is, the calls on the asker's event
  loop wait for it (then take from it), calls from other threads count one each.
* **A failing Redis is not waited for in turn**: when a count fails, the calls waiting for it
  go on at once, and every call counts on its own (each with its own timeout, concurrently)
  until a count succeeds again.

What it changes:

* Calls leased by a worker and not used there are lost to the window: a client whose calls
  stop reaching one worker may be refused that many calls before its limit (per worker, at
  most ``1/LEASE_SHARE`` of what was left when its lease was taken).
* A lease whose answer did not come back in time (or whose asker was cancelled) may still have
  been added in Redis: up to ``MCPAUTH_RATE_LIMIT_LEASE`` calls counted and never admitted, once
  per failure (the calls after it count one each).
* ``RateLimit`` headers say what this worker knows: the count when its lease was taken plus
  the calls it admitted since.
* While Redis is unreachable, a worker admits what it has leased (those calls were counted),
  then fails closed (or open) as configured.

``MCPAUTH_RATE_LIMIT_LEASE`` (default 32) caps a lease; ``1`` counts every call in Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

#: A lease is at most this fraction of what the window has left.
LEASE_SHARE = 16
#: Leases kept before those of ended windows are dropped.
_PRUNE_AT = 1024


def lease_size(most: int, limit: int, count: int) -> int:
    """How many calls a count adds when a worker asks for up to ``most`` and the shared counter
    stands at ``count``: the counting script's rule (``mcpauth.admission.cache``), here for
    tests and readers."""
    if most <= 1:
        return 1
    return max(1, min(most, (limit - count) // LEASE_SHARE))


@dataclass
class _Lease:
    #: the window's end (epoch seconds): the lease is void after it
    window: int
    #: calls this worker may still admit without asking Redis
    left: int
    #: the count the next call admitted from the lease reports
    next_count: int
    #: the shared counter's value at its last answer
    seen: int
    #: a lease of several calls is being asked for: meanwhile concurrent calls on the asker's
    #: event loop wait for it (``arrival``), calls from threads count one each
    asking: bool = False
    arrival: asyncio.Future[None] | None = None
    #: the last count failed: every call counts on its own until one succeeds
    failing: bool = False


class Leases:
    """One process's leases, by counter key (which names client, rate and window)."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._prune_at = _PRUNE_AT

    def clear(self) -> None:
        """Forget every lease (their calls stay counted). A lease on its way is kept, emptied,
        for its asker to answer: the calls waiting for it must be woken."""
        with self._lock:
            self._leases = {k: lease for k, lease in self._leases.items() if lease.asking}
            for lease in self._leases.values():
                lease.left = 0

    def take(self, key: str, limit: int) -> int | None:
        """Admit a call from a lease: the count to report, or ``None`` (ask Redis)."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.left <= 0:
                return None
            lease.left -= 1
            count = lease.next_count
            lease.next_count += 1
            return min(count, limit)

    def size(
        self, key: str, limit: int, cap: int, loop: asyncio.AbstractEventLoop | None = None
    ) -> int:
        """The most calls the next count of ``key`` should ask Redis to add (Redis decides how
        many: :func:`lease_size`). Several: a lease is asked for, and until :meth:`counted` or
        :meth:`failed`, other calls on ``loop`` (the asker's event loop, when it has one) can
        wait for it (:meth:`arriving`)."""
        if cap <= 1:
            return 1
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.asking or lease.failing or lease.left > 0:
                # the first call of a window (nothing known of what is left); a lease on its
                # way (one per worker at a time keeps what it can strand bounded); a failing
                # Redis; a lease that arrived since this call looked (it counts alone)
                return 1
            most = lease_size(cap, limit, lease.seen)
            if most > 1:
                lease.asking = True
                lease.arrival = loop.create_future() if loop is not None else None
            return most

    def arriving(self, key: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """The lease of ``key`` that a call on ``loop`` is asking for, to wait for; or ``None``."""
        with self._lock:
            lease = self._leases.get(key)
            arrival = lease.arrival if lease is not None else None
        return arrival if arrival is not None and arrival.get_loop() is loop else None

    def failed(self, key: str, asked: int, *, cancelled: bool = False) -> None:
        """The count that asked for ``asked`` calls got no answer. Unless it was ``cancelled``,
        Redis is failing: until a count succeeds every call counts on its own, and the calls
        waiting for this one go on at once rather than in turn."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return
            if not cancelled:
                lease.failing = True
            if asked > 1:
                self._answered(lease)

    @staticmethod
    def _answered(lease: _Lease) -> None:
        """The lease asked for came (or will not): wake those waiting (on the asker's loop,
        which is where :meth:`counted` and :meth:`failed` run for a lease with an arrival)."""
        lease.asking = False
        arrival, lease.arrival = lease.arrival, None
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    def counted(self, key: str, limit: int, window: int, asked: int, added: int, count: int) -> int:
        """Record Redis's answer to a count that asked for up to ``asked`` calls: it added
        ``added`` and the counter is now ``count``. Return the count the calling call reports
        (over ``limit`` when it is refused)."""
        before = count - added
        granted = min(added, limit - before)
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                if len(self._leases) >= self._prune_at:
                    self._prune()
                lease = self._leases[key] = _Lease(window, 0, 0, count)
            lease.seen = max(lease.seen, count)
            lease.failing = False
            if asked > 1:
                self._answered(lease)
            if granted <= 0:
                return count
            lease.left += granted - 1
            lease.next_count = max(lease.next_count, before + 2)
        return before + 1

    def _prune(self) -> None:
        now = int(time.time())
        for key in [
            k for k, lease in self._leases.items() if lease.window < now and not lease.asking
        ]:
            del self._leases[key]
        # many clients in their windows at once: scan again only when twice as many
        self._prune_at = max(_PRUNE_AT, 2 * len(self._leases))

    def snapshot(self) -> dict[str, Any]:
        """What is leased, by key (for tests and debugging)."""
        with self._lock:
            return {k: (lease.left, lease.seen) for k, lease in self._leases.items()}
