"""HTTP API (django-ninja): health endpoints. OpenAPI docs at /api/docs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.db import connection
from django.http import HttpRequest
from ninja import NinjaAPI, Schema, Status

from mcpauth import rls
from mcpauth.conf import get_settings
from mcpauth.jwks import keysets

api = NinjaAPI(
    title="Governed MCP server",
    version="0.1.0",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
    urls_namespace="api",
)


class Health(Schema):
    status: str


class Check(Schema):
    ok: bool
    latency_ms: float
    error: str | None = None


class IssuerKeys(Schema):
    """One issuer's signing keys, as readiness sees them."""

    ok: bool
    keys: int
    error: str | None = None
    #: failed fetches in a row (0 after a success)
    failures: int = 0
    #: seconds since the keys were fetched (``null``: never)
    age_s: float | None = None
    #: seconds until the next fetch may be attempted, while failing
    retry_in_s: float | None = None


class Readiness(Schema):
    #: ``ok``; ``degraded`` when some issuers' keys are unavailable but not all (200: the other
    #: issuers' callers are served); ``unavailable`` (503)
    status: str
    checks: dict[str, Check]
    #: each configured issuer's key state
    issuers: dict[str, IssuerKeys] = {}


@api.get("/health", response=Health, tags=["health"], summary="Liveness")
def health(request: HttpRequest) -> dict[str, str]:
    return {"status": "ok"}


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


def _issuer_keys() -> dict[str, dict[str, Any]]:
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


@api.get(
    "/health/ready",
    response={200: Readiness, 503: Readiness},
    tags=["health"],
    summary="Readiness: database, caches and identity-provider keys",
)
def ready(request: HttpRequest) -> Status[dict[str, Any]]:
    started = time.perf_counter()
    issuers = _issuer_keys()
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
    body = {"status": status, "checks": checks, "issuers": issuers}
    return Status(200 if ok else 503, body)
