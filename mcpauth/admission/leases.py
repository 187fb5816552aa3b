"""Rate-limit counts leased in blocks: a worker takes several of a window's calls at once.

Counting every call in Redis costs a round trip per call; on this project's benchmark that is
about 0.2 ms of CPU per call, mostly the kernel's side of it (the wake-ups of two processes),
whatever the client is. A worker that has seen that plenty of a client's window is left takes a
*lease* instead: it adds ``n`` to the shared counter in the one round trip it would have made
anyway, admits the call, and admits the client's next ``n - 1`` calls of that window itself.

What still holds:

* **Never more calls than the limit in a window, across every worker**: each admitted call was
  added to the shared counter before it was admitted (a lease adds its calls when it is taken),
  and a lease is granted only as far as the counter had room.
* **Near the limit every call is counted on its own.** A lease is at most
  ``1/LEASE_SHARE`` of what the last count left (and at most ``MCPAUTH_RATE_LIMIT_LEASE``), so
  it shrinks to one call as the window fills; the first call of a window, and every call of a
  limit under ``2 * LEASE_SHARE``, is counted alone, exactly as before.
* **A refusal is as before**: the client's count is over its limit in Redis.

What it changes:

* Calls leased by a worker and not used there are lost to the window: a client whose calls
  stop reaching one worker may be refused that many calls before its limit (at most
  ``1/LEASE_SHARE`` of what was left when the lease was taken, per worker: a worker asks for one
  lease at a time, and concurrent calls count one each while it is on its way).
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

#: A lease is at most this fraction of what the window had left at the last count.
LEASE_SHARE = 16
#: Leases kept before those of ended windows are dropped.
_PRUNE_AT = 1024


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


class Leases:
    """One process's leases, by counter key (which names client, rate and window)."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._prune_at = _PRUNE_AT

    def clear(self) -> None:
        with self._lock:
            self._leases.clear()

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
        """How many calls the next count of ``key`` should add. Several: a lease is asked for,
        and until :meth:`counted` or :meth:`failed`, other calls on ``loop`` (the asker's
        event loop, when it has one) can wait for it (:meth:`arriving`)."""
        if cap <= 1:
            return 1
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.asking:
                # the first call of a window (nothing known of what is left), or a lease is on
                # its way: one lease per worker at a time keeps what it can strand bounded
                return 1
            size = max(1, min(cap, (limit - lease.seen) // LEASE_SHARE))
            if size > 1:
                lease.asking = True
                lease.arrival = loop.create_future() if loop is not None else None
            return size

    def arriving(self, key: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """The lease of ``key`` that a call on ``loop`` is asking for, to wait for; or ``None``."""
        with self._lock:
            lease = self._leases.get(key)
            arrival = lease.arrival if lease is not None else None
        return arrival if arrival is not None and arrival.get_loop() is loop else None

    def failed(self, key: str, asked: int) -> None:
        """The count of ``asked`` calls got no answer: the next call may ask again."""
        if asked > 1:
            with self._lock:
                lease = self._leases.get(key)
                if lease is not None:
                    self._answered(lease)

    @staticmethod
    def _answered(lease: _Lease) -> None:
        """The lease asked for came (or will not): wake those waiting (on the asker's loop,
        which is where :meth:`counted` and :meth:`failed` run for a lease with an arrival)."""
        lease.asking = False
        arrival, lease.arrival = lease.arrival, None
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    def counted(self, key: str, limit: int, window: int, asked: int, count: int) -> int:
        """Record Redis's answer ``count`` to adding ``asked``; return the count the calling
        call reports (over ``limit`` when it is refused)."""
        before = count - asked
        granted = min(asked, limit - before)
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                if len(self._leases) >= self._prune_at:
                    self._prune()
                lease = self._leases[key] = _Lease(window, 0, 0, count)
            lease.seen = max(lease.seen, count)
            if asked > 1:
                self._answered(lease)
            if granted <= 0:
                return count
            lease.left += granted - 1
            lease.next_count = max(lease.next_count, before + 2)
        return before + 1

    def _prune(self) -> None:
        now = int(time.time())
        for key in [k for k, lease in self._leases.items() if lease.window < now]:
            del self._leases[key]
        # many clients in their windows at once: scan again only when twice as many
        self._prune_at = max(_PRUNE_AT, 2 * len(self._leases))

    def snapshot(self) -> dict[str, Any]:
        """What is leased, by key (for tests and debugging)."""
        with self._lock:
            return {k: (lease.left, lease.seen) for k, lease in self._leases.items()}
