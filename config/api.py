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
from mcpauth.tokens import keyset

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


class Readiness(Schema):
    status: str
    checks: dict[str, Check]


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


def _jwks() -> None:
    if get_settings().preset == "none":
        raise RuntimeError("no identity provider configured")
    if keyset().ensure_loaded() == 0:
        raise RuntimeError("no signing keys available")


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
    checks = {
        "database": _run(_db),
        "cache": _run(_cache("default")),
        "ratelimit_cache": _run(_cache(get_settings().rate_limit_cache)),
        "jwks": _run(_jwks),
        "tenant_isolation": _run(_tenant_isolation),
    }
    ok = all(c["ok"] for c in checks.values())
    return Status(200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})
