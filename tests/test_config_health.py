"""Liveness and readiness over real HTTP."""

from __future__ import annotations

import httpx2

from tests.conftest import free_port
from tests.servers import uvicorn_process


def test_health_and_ready(live):
    assert httpx2.get(f"{live.base}/health").json() == {"status": "ok"}
    resp = httpx2.get(f"{live.base}/health/ready")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {
        "database",
        "cache",
        "ratelimit_cache",
        "jwks",
        "tenant_isolation",
    }
    assert all(c["ok"] and c["latency_ms"] >= 0 for c in body["checks"].values())


def test_ready_is_503_when_jwks_unavailable(live, idp, settings):
    settings.MCPAUTH_JWKS_URL = f"{idp.url}/missing.json"  # fresh key set, nothing cached
    resp = httpx2.get(f"{live.base}/health/ready")
    assert resp.status_code == 503
    checks = resp.json()["checks"]
    assert checks["jwks"]["ok"] is False and checks["database"]["ok"] is True


def test_openapi_docs(live):
    assert httpx2.get(f"{live.base}/api/docs").status_code == 200
    paths = httpx2.get(f"{live.base}/api/openapi.json").json()["paths"]
    assert {"/health", "/health/ready"} <= set(paths)


def test_ready_is_503_when_database_unreachable(tmp_path):
    """A server whose DATABASE_URL points at a closed port: alive, but not ready."""
    closed = free_port()
    env = {
        "DEBUG": "1",
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{closed}/nothing",
        "REDIS_URL": "",
    }
    with uvicorn_process(free_port(), env) as base:
        assert httpx2.get(f"{base}/health").status_code == 200
        resp = httpx2.get(f"{base}/health/ready", timeout=30)
        assert resp.status_code == 503
        body = resp.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["database"]["error"] == "OperationalError"
        assert "Traceback" not in resp.text
        assert body["checks"]["cache"]["ok"] is True
