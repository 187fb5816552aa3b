"""Rate limits per client_id over real HTTP, shared across processes through Redis."""

from __future__ import annotations

import time

import httpx2
import pytest
from django.db import connection

from audit.models import AuditEvent
from mcpauth.models import ClientPolicy
from tests.conftest import (
    MCP_ACCEPT,
    call_tool,
    client_id_with_room,
    free_port,
    wait_for_room,
)
from tests.servers import uvicorn_process


def _post(base: str, token: str | None, body: dict | None = None) -> httpx2.Response:
    headers = dict(MCP_ACCEPT)
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx2.post(f"{base}/mcp", json=body or call_tool("list_todos"), headers=headers)


def test_n_allowed_then_429_with_headers_then_window_resets(live, mint, settings):
    settings.MCPAUTH_RATE_LIMIT = "4/3s"
    token = mint(client_id="burst")
    first = _post(live.base, token)
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"default";q=4;w=3'
    assert first.headers["x-ratelimit-remaining"] == "3"
    seconds_left = int(first.headers["x-ratelimit-reset"])
    if seconds_left < 2:  # fixed windows: start the burst early in a fresh one
        time.sleep(seconds_left + 0.1)
        assert _post(live.base, token).headers["x-ratelimit-remaining"] == "3"
    statuses = [_post(live.base, token).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]

    refused = _post(live.base, token)
    assert refused.status_code == 429
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 4
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit"].startswith('"default";r=0;t=')
    body = refused.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["data"]["error"] == "rate_limited"
    row = AuditEvent.objects.filter(client_id="burst").latest("id")
    assert (row.outcome, row.status, row.tool) == ("rate_limited", 429, "list_todos")

    time.sleep(retry_after + 0.1)
    again = _post(live.base, token)
    assert again.status_code == 200, (retry_after, refused.headers, again.headers, again.text)


def test_limited_call_does_not_run_the_tool(live, mint, settings):
    settings.MCPAUTH_RATE_LIMIT = "1/m"
    token = mint(client_id=client_id_with_room("writer"))
    create = call_tool("create_todo", {"title": "once"})
    assert _post(live.base, token, create).status_code == 200
    assert _post(live.base, token, create).status_code == 429
    from todos.models import Todo

    assert Todo.all_tenants.count() == 1


def test_client_policy_custom_unlimited_and_blocked(live, mint, settings):
    settings.MCPAUTH_RATE_LIMIT = "2/m"
    premium_id = client_id_with_room("premium")
    ClientPolicy.objects.create(client_id=premium_id, mode="custom", rate="5/m")
    ClientPolicy.objects.create(client_id="vip", mode="unlimited")
    ClientPolicy.objects.create(client_id="evil", mode="blocked")

    premium = mint(client_id=premium_id)
    assert [_post(live.base, premium).status_code for _ in range(6)] == [200] * 5 + [429]

    vip = mint(client_id="vip")
    assert {_post(live.base, vip).status_code for _ in range(6)} == {200}

    evil = mint(client_id="evil")
    resp = _post(live.base, evil)
    assert resp.status_code == 403
    assert resp.json()["error"]["data"]["error"] == "access_denied"
    row = AuditEvent.objects.get(client_id="evil")
    assert (row.outcome, row.error_code) == ("denied", "client_blocked")


def test_scope_tier_rate(live, mint, settings):
    settings.MCPAUTH_RATE_LIMIT = "1/m"
    settings.MCPAUTH_SCOPE_RATE_LIMITS = {"todo:premium": "4/m"}
    token = mint(client_id=client_id_with_room("tiered"), scope="todo:read todo:premium")
    assert [_post(live.base, token).status_code for _ in range(5)] == [200] * 4 + [429]


def test_unauthenticated_flood_is_throttled_per_ip(live, settings):
    settings.MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = "5/m"
    wait_for_room("127.0.0.1")
    statuses = [_post(live.base, "not-a-jwt").status_code for _ in range(12)]
    assert statuses == [401] * 5 + [429] * 7
    assert AuditEvent.objects.filter(outcome="unauthenticated").count() == 5
    throttled = AuditEvent.objects.get(outcome="rate_limited")  # the first refusal over budget
    assert throttled.error_code == "ip_throttled"
    assert AuditEvent.objects.count() == 6  # the flood did not fill the audit table


def test_cache_down_fails_closed_with_503_and_audit_row(live, mint, settings):
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        },
    }
    resp = _post(
        live.base, mint(client_id="cache-victim"), call_tool("create_todo", {"title": "x"})
    )
    assert resp.status_code == 503
    assert resp.json()["error"]["data"]["error"] == "temporarily_unavailable"
    row = AuditEvent.objects.get(client_id="cache-victim")
    assert (row.outcome, row.status, row.error_code) == (
        "server_error",
        503,
        "ratelimit_cache_down",
    )
    from todos.models import Todo

    assert not Todo.all_tenants.exists()

    settings.MCPAUTH_RATE_LIMIT_FAIL_OPEN = True
    resp = _post(live.base, mint(client_id="cache-victim"))
    assert resp.status_code == 200
    assert AuditEvent.objects.filter(client_id="cache-victim", outcome="ok").count() == 1


@pytest.mark.needs_shared_services
def test_limit_is_shared_by_two_server_processes(live, mint, idp, tmp_path):
    """Two uvicorn processes on one Redis: the total allowed equals the limit, not twice it."""
    import os

    db = connection.settings_dict
    env = {
        "DEBUG": "0",
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": os.environ["REDIS_URL"],
        "BASE_URL": "http://127.0.0.1:8000",
        "MCPAUTH_ISSUER": idp.issuer,
        "MCPAUTH_TENANT_CLAIM": "org_id",
        "MCPAUTH_RATE_LIMIT": "10/m",
    }
    with uvicorn_process(free_port(), env) as a, uvicorn_process(free_port(), env) as b:
        client_id = client_id_with_room("shared-client")
        token = mint(client_id=client_id)
        statuses = [_post(base, token).status_code for _ in range(10) for base in (a, b)]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 10
    assert AuditEvent.objects.filter(client_id=client_id, outcome="ok").count() == 10
    assert AuditEvent.objects.filter(client_id=client_id, outcome="rate_limited").count() == 10


@pytest.mark.needs_shared_services
def test_redis_counter_backend_incr_contract():
    from django.core.cache import caches

    cache = caches["ratelimit"]
    assert type(cache).__module__ == "mcpauth.admission.cache"
    assert cache.add("probe", 1, 10) is True
    assert cache.add("probe", 1, 10) is False
    assert [cache.incr("probe"), cache.incr("probe")] == [2, 3]
    with pytest.raises(ValueError):
        cache.incr("never-set")


def test_check_warns_about_unshared_ratelimit_cache(settings):
    from mcpauth.checks import check_configuration

    settings.DEBUG = False
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "ratelimit": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    assert "mcpauth.W010" in {m.id for m in check_configuration()}
    settings.CACHES = {
        **settings.CACHES,
        "ratelimit": {
            "BACKEND": "mcpauth.admission.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1",
        },
    }
    assert "mcpauth.W010" not in {m.id for m in check_configuration()}
