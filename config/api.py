"""The reference project's OpenAPI documentation (django-ninja) at ``/api/docs``.

``/health`` and ``/health/ready`` are served by ``mcpauth.urls`` (included first in
``config/urls.py``); the operations here describe them with schemas, and answer the same way
(they call :mod:`mcpauth.health`) should ``mcpauth.urls`` ever come after this API.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import NinjaAPI, Schema, Status

from mcpauth import health

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
def live(request: HttpRequest) -> dict[str, str]:
    return health.liveness()


@api.get(
    "/health/ready",
    response={200: Readiness, 503: Readiness},
    tags=["health"],
    summary="Readiness: database, caches and identity-provider keys",
)
def ready(request: HttpRequest) -> Status[dict[str, Any]]:
    status, body = health.readiness()
    return Status(status, body)
