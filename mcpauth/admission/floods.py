"""Per-IP budget for refusals before admission: floods stay cheap and stay visible.

Requests refused before a caller is admitted (a bad ``Host`` or ``Origin``, an oversized body, a
malformed ``Authorization`` header, a missing or invalid token, a suspended tenant ...) count
against one budget per client IP, ``MCPAUTH_UNAUTHENTICATED_RATE_LIMIT`` (with django-ratelimit's
keys and windows, in the rate-limit cache, so it is shared by every worker):

* within the budget each refusal is answered and audited as usual;
* the first refusal over it is answered 429 and audited once (``error_code`` ``ip_throttled``);
* until that window ends, further refusals from the IP are answered 429 with no audit row each,
  and are only counted in this process: no cache round trip, no token work beyond the
  signature check (and no JWKS refetch for an unknown key);
* once the window is over, one summary row per IP and window (``method`` ``throttle/ip``,
  ``error_code`` ``ip_flood_summary``) records how many refusals went unrecorded, so the flood
  stays visible in the audit trail.

A request whose token is valid is never refused because of this budget: the budget only counts
and suppresses refusals, and admission does not consult it.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from mcpauth.admission import ratelimit
from mcpauth.conf import get_settings
from mcpauth.exceptions import RateLimited, ServiceUnavailable

#: How often expired throttles are looked for (their summary rows written).
SWEEP_INTERVAL = 1.0
MAX_TRACKED = 100_000


class Verdict(enum.Enum):
    RECORD = "record"  # within the budget: answer and audit as usual
    START = "start"  # the first refusal over it: 429, audited once
    SUPPRESS = "suppress"  # 429 without an audit row


@dataclass
class Throttle:
    until: float  # monotonic
    started: datetime
    retry_after: int
    suppressed: int = 0


@dataclass(frozen=True)
class Summary:
    ip: str
    suppressed: int
    started: datetime
    ended: datetime


_throttles: dict[str, Throttle] = {}
#: summaries of ended throttles replaced before a sweep saw them
_ended: list[Summary] = []
_lock = threading.Lock()
_swept_at = float("-inf")


def _key(ip: str) -> str:
    return ip or "-"


def throttled(ip: str) -> Throttle | None:
    """The IP's active throttle in this process, if any."""
    found = _throttles.get(_key(ip))
    if found is not None and found.until > time.monotonic():
        return found
    return None


def _over_budget(ip: str, exc: RateLimited) -> Verdict:
    with _lock:
        active = throttled(ip)
        if active is not None:  # a concurrent refusal from the address started it meanwhile
            active.suppressed += 1
            return Verdict.SUPPRESS
        if len(_throttles) >= MAX_TRACKED:
            # bounded memory, but no refusal leaves the trail: what the dropped throttles
            # suppressed so far is summarised at the next sweep
            now = _now()
            _ended.extend(
                Summary(key, t.suppressed, t.started, now)
                for key, t in _throttles.items()
                if t.suppressed
            )
            _throttles.clear()
        retry = int(exc.retry_after or 1)
        previous = _throttles.get(_key(ip))
        if previous is not None and previous.suppressed:  # its window ended, unswept
            _ended.append(Summary(_key(ip), previous.suppressed, previous.started, _now()))
        _throttles[_key(ip)] = Throttle(
            until=time.monotonic() + retry, started=_now(), retry_after=retry
        )
    return Verdict.START


def charge(ip: str) -> Verdict:
    """Count one refusal for ``ip`` (sync: may do a cache round trip)."""
    active = throttled(ip)
    if active is not None:
        active.suppressed += 1
        return Verdict.SUPPRESS
    conf = get_settings()
    try:
        ratelimit._usage(
            "mcpauth.anon",
            _key(ip),
            conf.unauthenticated_rate_limit,
            increment=True,
            policy="unauthenticated",
        )
    except RateLimited as exc:
        return _over_budget(ip, exc)
    except ServiceUnavailable:
        pass  # an unreachable cache never suppresses a record
    return Verdict.RECORD


def refusal(active: Throttle | None) -> RateLimited:
    """The 429 a throttled IP gets."""
    remaining = int((active.until - time.monotonic()) + 1) if active is not None else 1
    return RateLimited(
        "Too many refused requests from this address; retry later.",
        reason="ip_throttled",
        retry_after=max(1, remaining),
    )


def due_summaries() -> list[Summary]:
    """Throttles whose window ended, removed; at most one sweep per ``SWEEP_INTERVAL``."""
    global _swept_at
    now = time.monotonic()
    if now - _swept_at < SWEEP_INTERVAL:
        return []
    with _lock:
        _swept_at = now
        expired = [(ip, t) for ip, t in _throttles.items() if t.until <= now]
        for ip, _ in expired:
            del _throttles[ip]
        summaries = [*_ended]
        _ended.clear()
    ended = _now()
    summaries += [Summary(ip, t.suppressed, t.started, ended) for ip, t in expired if t.suppressed]
    return summaries


def _now() -> datetime:
    return datetime.now(UTC)


def reset() -> None:
    """Forget every throttle (tests)."""
    global _swept_at
    with _lock:
        _throttles.clear()
        _ended.clear()
        _swept_at = float("-inf")
