"""Per-client rate limits on django-ratelimit's core, in a shared cache.

* Authenticated calls are keyed by OAuth ``client_id`` within its issuer (never by tenant,
  which may be missing): two issuers' clients with one id count apart. The limit holds however
  many workers or hosts serve ``/mcp`` when the cache is shared (Redis via ``REDIS_URL``).
* Rate: the client's :class:`~mcpauth.models.ClientPolicy` override for its issuer (custom,
  unlimited, blocked), else the
  most generous ``MCPAUTH_SCOPE_RATE_LIMITS`` tier the token holds, else ``MCPAUTH_RATE_LIMIT``.
* Refusals of requests that carry no admitted caller are budgeted per client IP
  (``mcpauth.admission.floods``).
* When the cache is unreachable the call fails closed with 503, unless
  ``MCPAUTH_RATE_LIMIT_FAIL_OPEN`` is on.
* With Redis, a worker that sees plenty of a window left counts several calls at once and
  admits the rest of them itself (:mod:`mcpauth.admission.leases`): never over the limit, one
  round trip for up to ``MCPAUTH_RATE_LIMIT_LEASE`` calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.signals import setting_changed
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django_ratelimit import core as rl_core
from django_ratelimit.core import get_usage

from mcpauth.admission.cache import RedisCache
from mcpauth.admission.leases import Leases
from mcpauth.caching import revocation
from mcpauth.caching.localcache import TTLCache, require_io
from mcpauth.conf import get_settings, parse_rate
from mcpauth.exceptions import AccessDenied, RateLimited, ServiceUnavailable
from mcpauth.models import ClientPolicy
from mcpauth.values import Principal, Usage  # Usage re-exported: it lived here

log = logging.getLogger(__name__)

_ttl = lambda: get_settings().cache_ttl  # noqa: E731
_policies: TTLCache[tuple[str, str] | None] = TTLCache(_ttl)
#: This process's leased counts (Redis only).
leases = Leases()


class _Req:
    """django-ratelimit only needs ``method`` from the request; we key explicitly."""

    method = "POST"


def _policy(issuer: str, client_id: str) -> tuple[str, str] | None:
    def load() -> tuple[str, str] | None:
        rows = ClientPolicy.objects.filter(issuer=issuer, client_id=client_id)
        row = rows.values("mode", "rate").first()
        return (row["mode"], row["rate"]) if row else None

    return _policies.get_or_load((issuer, client_id), load)


def _group(principal: Principal) -> str:
    """django-ratelimit's group: one per issuer, so that two issuers' clients with the same id
    never share a counter (the window still follows the client id)."""
    return f"mcpauth.client {principal.issuer}" if principal.issuer else "mcpauth.client"


def _per_second(rate: str) -> float:
    count, seconds = parse_rate(rate)
    return count / seconds


def rate_for(principal: Principal) -> tuple[str | None, str]:
    """``(rate, policy name)`` for a client; ``rate`` None means unlimited.

    Raises :class:`AccessDenied` for a blocked client.
    """
    conf = get_settings()
    policy = _policy(principal.issuer, principal.client_id)
    if policy is not None:
        mode, rate = policy
        if mode == ClientPolicy.Mode.BLOCKED:
            raise AccessDenied("This client is blocked.", reason="client_blocked")
        if mode == ClientPolicy.Mode.UNLIMITED:
            return None, "unlimited"
        if rate:
            return rate, "client"
    tiers = [r for s, r in conf.scope_rate_limits.items() if s in principal.scopes]
    if tiers:
        return max(tiers, key=_per_second), "tier"
    return conf.rate_limit, "default"


def _window(group: str, value: str, rate: str) -> tuple[str, int, int, int]:
    """django-ratelimit's ``(cache key, limit, period, window end)`` for a hit now."""
    limit, period = rl_core._split_rate(rate)
    window = rl_core._get_window(value, period)
    return rl_core._make_cache_key(group, window, rate, value, rl_core.ALL), limit, period, window


def _counted(count: int, limit: int, window: int) -> dict[str, Any]:
    """What ``get_usage`` returns, from a counter value."""
    return {
        "count": count,
        "limit": limit,
        "should_limit": count > limit,
        "time_left": window - int(time.time()),
    }


#: ``_redis()``'s answer, per process: Django's cache handler would build a new cache object in
#: every request's async context, and ``RedisCache`` shares its client and pools anyway.
_counting_cache: list[RedisCache | None] = []


def _redis() -> RedisCache | None:
    """The rate-limit cache when one Redis round trip can count (else ``get_usage`` does)."""
    if _counting_cache:
        return _counting_cache[0]
    cache = caches[get_settings().rate_limit_cache]
    found = (
        cache
        if isinstance(cache, RedisCache) and getattr(settings, "RATELIMIT_ENABLE", True)
        else None
    )
    _counting_cache[:] = [found]
    return found


@receiver(setting_changed)
def _forget_counting_cache(**_: Any) -> None:
    _counting_cache.clear()


def _count_in_redis(group: str, value: str, rate: str) -> dict[str, Any] | None:
    """django-ratelimit's counting in one Redis round trip, when the cache allows it.

    Same keys, windows and result as ``get_usage(..., increment=True)``, which spends two or
    three round trips (``add``, then ``incr``). ``None`` when the cache is not
    :class:`mcpauth.admission.cache.RedisCache` or rate limiting is disabled: callers then use
    ``get_usage`` itself.
    """
    cache = _redis()
    if cache is None:
        return None
    key, limit, period, window = _window(group, value, rate)
    count = leases.take(key, limit)
    if count is None:
        asked = leases.size(key, limit, get_settings().rate_limit_lease)
        try:
            total, added = cache.count(key, period + rl_core.EXPIRATION_FUDGE, asked, limit)
        except BaseException as exc:  # _usage decides what a failed count means
            leases.failed(key, asked, cancelled=not isinstance(exc, Exception))
            raise
        count = leases.counted(key, limit, window, asked, added, total)
    return _counted(count, limit, window)


def _usage(group: str, value: str, rate: str, *, increment: bool, policy: str) -> Usage | None:
    """Count one hit (or, without ``increment``, check that one more would be allowed).

    Returns ``None`` when the cache failed and fail-open is configured.
    """
    try:
        usage = _count_in_redis(group, value, rate) if increment else None
        if usage is None:
            usage = get_usage(
                _Req(), group=group, key=lambda _g, _r: value, rate=rate, increment=increment
            )
    except Exception:  # the cache backend's own errors (redis.ConnectionError, timeouts ...)
        log.warning("rate-limit cache unavailable", exc_info=True)
        usage = None
    return _judge(usage, rate, increment=increment, policy=policy)


def _judge(
    usage: dict[str, Any] | None, rate: str, *, increment: bool, policy: str
) -> Usage | None:
    """The :class:`Usage` of a count, or the refusal it calls for."""
    conf = get_settings()
    failed = usage is None or (usage["limit"] == 0 and usage["time_left"] == -1)
    if failed or usage is None:
        if conf.rate_limit_fail_open:
            log.warning("rate-limit cache unavailable; failing open (MCPAUTH_RATE_LIMIT_FAIL_OPEN)")
            return None
        raise ServiceUnavailable(
            "Rate limiting is unavailable (cache unreachable); failing closed.",
            reason="ratelimit_cache_down",
            retry_after=5,
        )
    limit, window = parse_rate(rate)
    result = Usage(
        limit=limit,
        remaining=max(0, limit - int(usage["count"])),
        window=window,
        # the window still counts during its last whole second (django-ratelimit: ts <= window)
        reset=max(1, int(usage["time_left"]) + 1),
        policy=policy,
    )
    over = usage["should_limit"] if increment else int(usage["count"]) >= limit
    if over:
        raise RateLimited(
            f"Rate limit of {limit} calls per {window}s exceeded.",
            reason=f"{policy}_limit",
            retry_after=result.reset,
            headers=dict(result.headers()),
        )
    return result


def hit(principal: Principal) -> Usage | None:
    """Count a call for ``principal.client_id``; raise RateLimited/AccessDenied/ServiceUnavailable.

    Returns the usage (for response headers), or ``None`` when unlimited or failed open.
    """
    rate, policy = rate_for(principal)
    if rate is None:
        return None
    return _usage(_group(principal), principal.client_id, rate, increment=True, policy=policy)


async def ahit(principal: Principal, rated: tuple[str | None, str] | None = None) -> Usage | None:
    """:func:`hit` on the event loop: the same count and outcome, counted by the async client.

    ``rated`` is :func:`rate_for`'s answer when the caller already has it. Only for what needs
    no blocking I/O: inside ``cache_only()`` a policy not in the cache, or a counting cache that
    is neither Redis nor in-process, raises ``CacheMiss`` (always before anything is counted).
    """
    rate, policy = rated if rated is not None else rate_for(principal)
    if rate is None:
        return None
    group, value = _group(principal), principal.client_id
    cache = _redis()
    if cache is None:
        backend = caches[get_settings().rate_limit_cache]
        if not isinstance(backend, LocMemCache):
            require_io()
        return _usage(group, value, rate, increment=True, policy=policy)  # in-process
    key, limit, period, window = _window(group, value, rate)
    loop = asyncio.get_running_loop()
    while True:
        count = leases.take(key, limit)
        if count is not None:  # leased: counted in Redis already
            return _judge(_counted(count, limit, window), rate, increment=True, policy=policy)
        arrival = leases.arriving(key, loop)
        if arrival is None:
            break
        await asyncio.shield(arrival)  # a lease on its way: take from it, or ask once it came
    asked = leases.size(key, limit, get_settings().rate_limit_lease, loop)
    counted: dict[str, Any] | None
    try:
        total, added = await cache.acount(key, period + rl_core.EXPIRATION_FUDGE, asked, limit)
    except Exception:  # the cache backend's own errors (redis.ConnectionError, timeouts ...)
        log.warning("rate-limit cache unavailable", exc_info=True)
        leases.failed(key, asked)
        counted = None
    except BaseException:  # cancelled: the next call may ask for a lease again
        leases.failed(key, asked, cancelled=True)
        raise
    else:
        count = leases.counted(key, limit, window, asked, added, total)
        counted = _counted(count, limit, window)
    return _judge(counted, rate, increment=True, policy=policy)


@revocation.on_change
def clear_policies() -> None:
    _policies.clear()


def clear_cache(**_: Any) -> None:
    _policies.clear()
    leases.clear()


post_save.connect(revocation.changed, sender=ClientPolicy, dispatch_uid="mcpauth-policy-save")
post_delete.connect(revocation.changed, sender=ClientPolicy, dispatch_uid="mcpauth-policy-delete")
