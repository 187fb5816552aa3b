"""``/health`` (liveness) and ``/health/ready`` (readiness), served by ``mcpauth.urls``.

Readiness checks what a governed call needs: the database, the default and rate-limit caches,
each issuer's signing keys, and (PostgreSQL) the tenant-isolation policies. 200 when all hold,
``degraded`` (still 200) when some issuers' keys are missing but not all, else 503 with a
per-check breakdown: never a traceback, a URL or an identity provider's answer, only the kind of
failure. :func:`readiness` is the answer as data, for projects that document or wrap it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from mcpauth import rls
from mcpauth.conf import get_settings
from mcpauth.identity.jwks import keysets


def _db() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _cache(alias: str) -> Callable[[], None]:
    def check() -> None:
        cache = caches[alias]
        cache.set("health:probe", "1", 10)
        if cache.get("health:probe") != "1":
            raise RuntimeError("value did not round-trip")

    return check


def issuer_keys() -> dict[str, dict[str, Any]]:
    """Each issuer's key state, fetching (single flight, backed off) where none is loaded."""
    states: dict[str, dict[str, Any]] = {}
    for issuer, keys in keysets().items():
        error = None
        try:
            keys.ensure_loaded()
        except Exception as exc:  # the kind only: never a URL or the IdP's answer
            error = type(exc).__name__
        state = keys.state()
        ok = error is None and state["keys"] > 0
        if error is None and not ok:
            error = "NoSigningKeys"
        states[issuer] = {
            "ok": ok,
            "keys": state["keys"],
            "error": error,
            "failures": state["failures"],
            "age_s": state["age_s"],
            "retry_in_s": state["retry_in_s"],
        }
    return states


def _tenant_isolation() -> None:
    problems = rls.problems()
    if problems:  # the names stay in the server log and manage.py check (mcpauth.W040)
        raise RuntimeError(f"{len(problems)} tenant-owned tables or keys not guarded")


def _run(fn: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        fn()
        error = None
    except Exception as exc:  # report the failure's kind, never a traceback
        error = type(exc).__name__
        if fn is _db:
            connection.close_if_unusable_or_obsolete()
    return {
        "ok": error is None,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "error": error,
    }


def liveness() -> dict[str, str]:
    return {"status": "ok"}


def readiness() -> tuple[int, dict[str, Any]]:
    """``(status code, body)``: 200 ``ok`` or ``degraded``, else 503 ``unavailable``."""
    started = time.perf_counter()
    issuers = issuer_keys()
    errors = [state["error"] for state in issuers.values() if not state["ok"]]
    if get_settings().preset == "none":
        errors = ["NotConfigured"]
    served = any(state["ok"] for state in issuers.values())  # some issuer's callers are served
    jwks = {
        "ok": served,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "error": None if served else (errors[0] if errors else "NoSigningKeys"),
    }
    checks = {
        "database": _run(_db),
        "cache": _run(_cache("default")),
        "ratelimit_cache": _run(_cache(get_settings().rate_limit_cache)),
        "jwks": jwks,
        "tenant_isolation": _run(_tenant_isolation),
    }
    ok = all(c["ok"] for c in checks.values())
    status = "ok" if ok else "unavailable"
    if ok and not all(state["ok"] for state in issuers.values()):
        status = "degraded"  # some issuers' callers are refused (503), the others served
    return (200 if ok else 503), {"status": status, "checks": checks, "issuers": issuers}


@require_GET
def live(request: HttpRequest) -> JsonResponse:
    """``GET /health``: the process answers."""
    return JsonResponse(liveness())


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    """``GET /health/ready``: see :func:`readiness`."""
    status, body = readiness()
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    return response
