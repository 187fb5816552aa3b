"""Tools calling other systems over ``/mcp``: ``api_key``, ``forward`` and ``none`` downstreams,
no token passthrough, an audit row per outbound call, and SQLite's write lock.

The downstream (``tests/downstream_service.py``) checks what it receives: the API key (shared,
or the caller's tenant's), a forwarded token's signature, expiry and audience. Client
credentials and token exchange, which need a real authorization server, are in
``tests/test_e2e_downstream_oidc.py``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection
from django.urls import reverse

from audit.models import AuditEvent
from mcpauth.downstream import oauth
from mcpauth.models import Tenant
from tests.conftest import RESOURCE, FakeIdP, LiveServer, Minter, free_port
from tests.downstream_service import (
    KEY,
    DownstreamService,
    call_tool_over_mcp,
    grant_outbound_tools,
    no_secret_anywhere,
    rows_of,
    serve,
    set_secret,
)
from tests.outbound.models import Receipt

SHARED_KEY = "crm-shared-key-0001"


@pytest.fixture(scope="module")
def service(idp: FakeIdP) -> Iterator[DownstreamService]:
    with serve(DownstreamService(issuers={idp.issuer: f"{idp.url}/jwks.json"})) as svc:
        yield svc


def declarations(svc: DownstreamService) -> dict[str, Any]:
    return {
        "crm": {"url": svc.url("crm"), "auth": "api_key", "header": "X-API-Key"},
        "tcrm": {"url": svc.url("tcrm"), "auth": "api_key", "per_tenant": True},
        "mesh": {"url": svc.url("mesh"), "auth": "forward"},
        "open": {"url": svc.url("open"), "auth": "none"},
        "slow": {"url": svc.url("slow"), "auth": "none", "timeout": 30},
        "sluggish": {"url": svc.url("slow"), "auth": "none", "timeout": 0.5},
        "dead": {
            "url": f"http://127.0.0.1:{free_port()}/dead",
            "auth": "none",
            "connect_timeout": 1,
        },
    }


@pytest.fixture
def world(live: LiveServer, service: DownstreamService, settings: Any) -> DownstreamService:
    settings.MCPAUTH_ENCRYPTION_KEYS = [KEY]
    settings.MCPAUTH_DOWNSTREAMS = declarations(service)
    service.reset()
    service.api_keys = {}
    caches["default"].clear()
    oauth.clear_metadata()
    grant_outbound_tools()
    yield service
    service.gate.set()


# --- api_key ----------------------------------------------------------------------------------


def test_api_key_sync_tool_reaches_the_downstream_and_each_call_is_audited(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    printed = set_secret("crm", SHARED_KEY)
    assert SHARED_KEY not in printed
    world.api_keys = {SHARED_KEY: "shared"}
    token = mint()
    reply = call_tool_over_mcp(
        live.url, token, "call_sync", {"name": "crm", "query": "email=a@example.com"}
    )
    assert not reply.is_error, reply.result
    assert reply.data["status"] == 200 and reply.data["body"]["key"] == "shared"
    # the tool's own view of the request it sent: no credential
    assert "x-api-key" not in {k.lower() for k in reply.data["request_headers"]}
    [seen] = world.requests_to("crm")
    assert (seen["verdict"], seen["path"], seen["query"]) == (
        "ok",
        "/crm/whoami",
        "email=a%40example.com",
    )

    call, [out] = rows_of(reply.request_id)
    assert (call.method, call.tool, call.outcome) == ("tools/call", "call_sync", "ok")
    assert (out.method, out.tool, out.outcome, out.status) == (
        "outbound/crm",
        "call_sync",
        "ok",
        200,
    )
    assert (out.tenant, out.client_id, out.subject) == (call.tenant, call.client_id, call.subject)
    assert out.arguments == {
        "downstream": "crm",
        "http_method": "GET",
        "host": world.base.removeprefix("http://"),
        "path": "/crm/whoami",
        "auth": "api_key",
        "obtained": "stored",
        "at_ms": out.arguments["at_ms"],
        **({"write_lock_held": False} if connection.vendor == "sqlite" else {}),
    }
    assert 0 < out.arguments["at_ms"] < call.duration_ms
    assert out.duration_ms > 0 and out.trace_id == call.trace_id
    assert "email" not in json.dumps(out.arguments)  # never the query string
    no_secret_anywhere(SHARED_KEY, token)


def test_rotation_applies_to_the_next_call_without_a_restart(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    set_secret("crm", "crm-key-old-000001")
    world.api_keys = {"crm-key-old-000001": "old"}
    assert call_tool_over_mcp(live.url, mint(), "call_async", {"name": "crm"}).data["body"] == {
        "ok": True,
        "path": "/crm/whoami",
        "key": "old",
    }
    assert "Rotated" in set_secret("crm", "crm-key-new-000002")
    world.api_keys = {"crm-key-new-000002": "new"}  # the old key is revoked downstream
    reply = call_tool_over_mcp(live.url, mint(), "call_async", {"name": "crm"})
    assert reply.data["body"]["key"] == "new"
    _, [out] = rows_of(reply.request_id)
    assert (out.method, out.tool, out.status, out.arguments["obtained"]) == (
        "outbound/crm",
        "call_async",
        200,
        "stored",
    )
    changes = AuditEvent.objects.filter(method__startswith="config/downstream_secret.")
    assert sorted(changes.values_list("method", flat=True)) == [
        "config/downstream_secret.create",
        "config/downstream_secret.rotate",
    ]
    no_secret_anywhere("crm-key-old-000001", "crm-key-new-000002")


def test_per_tenant_keys_each_tenant_gets_its_own_and_a_tenant_without_one_is_refused(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    for name in ("acme", "globex", "initech"):
        Tenant.objects.get_or_create(external_id=name)
    set_secret("tcrm", "acme-key-00000001", tenant="acme")
    set_secret("tcrm", "globex-key-0000002", tenant="globex")
    world.api_keys = {"acme-key-00000001": "acme", "globex-key-0000002": "globex"}
    for org in ("acme", "globex"):
        reply = call_tool_over_mcp(live.url, mint(org_id=org), "call_sync", {"name": "tcrm"})
        assert reply.data["body"]["key"] == org
        assert "authorization" not in {k.lower() for k in reply.data["request_headers"]}

    reply = call_tool_over_mcp(live.url, mint(org_id="initech"), "call_sync", {"name": "tcrm"})
    assert reply.is_error
    assert reply.text == "No secret is stored for downstream 'tcrm' for your tenant."
    call, [out] = rows_of(reply.request_id)
    assert (call.outcome, call.tenant) == ("denied", "initech")
    assert (out.outcome, out.status, out.error_code) == ("denied", 0, "no_secret")
    assert len(world.requests_to("tcrm")) == 2  # nothing was sent for initech
    no_secret_anywhere("acme-key-00000001", "globex-key-0000002")


def test_one_credential_per_client(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    set_secret("crm", SHARED_KEY)
    world.api_keys = {SHARED_KEY: "shared"}
    reply = call_tool_over_mcp(live.url, mint(), "call_twice", {"name": "crm"})
    assert reply.data == [200, 200, 200, 200]
    _, outs = rows_of(reply.request_id)
    assert [o.arguments["path"] for o in outs] == ["/crm/a", "/crm/b", "/crm/a", "/crm/b"]
    assert [o.arguments["at_ms"] for o in outs] == sorted(o.arguments["at_ms"] for o in outs)


# --- forward ----------------------------------------------------------------------------------


def test_forward_only_when_the_callers_token_names_the_downstream(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    mesh = world.url("mesh")
    token = mint(aud=[RESOURCE, mesh], sub="alice")
    reply = call_tool_over_mcp(live.url, token, "call_async", {"name": "mesh"})
    assert reply.data["status"] == 200, reply.data
    assert (reply.data["body"]["sub"], reply.data["body"]["aud"]) == ("alice", [RESOURCE, mesh])
    assert "authorization" not in {k.lower() for k in reply.data["request_headers"]}
    _, [out] = rows_of(reply.request_id)
    assert (out.outcome, out.arguments["auth"], out.arguments["obtained"]) == (
        "ok",
        "forward",
        "caller",
    )

    # a token for this server only is never forwarded
    refused = call_tool_over_mcp(live.url, mint(), "call_sync", {"name": "mesh"})
    assert refused.is_error
    assert refused.text.startswith("Forwarding your token to downstream 'mesh' is refused")
    call, [out] = rows_of(refused.request_id)
    assert (call.outcome, out.outcome, out.error_code, out.status) == (
        "denied",
        "denied",
        "forward_refused",
        0,
    )
    assert len(world.requests_to("mesh")) == 1
    no_secret_anywhere(token)


# --- no token passthrough ---------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["single-exchange", "sdk-session-manager"])
@pytest.mark.parametrize("tool", ["peek_request", "peek_request_async"])
def test_a_tool_cannot_see_the_callers_bearer_token(
    world: DownstreamService, live: LiveServer, mint: Minter, settings: Any, fast: bool, tool: str
) -> None:
    settings.MCPAUTH_FAST_TRANSPORT = fast
    token = mint()
    reply = call_tool_over_mcp(live.url, token, tool)
    assert not reply.is_error, reply.result
    seen = reply.data
    assert seen["request_headers"]["user-agent"]  # the tool does see the request
    for view in ("get_http_headers", "request_headers", "context_request_headers"):
        assert "authorization" not in {k.lower() for k in seen[view]}, view
    assert "authorization" not in {k.lower() for k, _ in seen["scope_headers"]}
    assert token not in json.dumps(reply.result)


@pytest.mark.parametrize("where", ["header", "query", "body"])
def test_a_tool_that_got_the_token_anyway_cannot_send_it(
    world: DownstreamService, live: LiveServer, mint: Minter, where: str
) -> None:
    token = mint()
    arguments = {"name": "open", "token": token, "where": where}
    reply = call_tool_over_mcp(live.url, token, "pass_through", arguments)
    assert reply.is_error and "token passthrough is refused" in reply.text
    call, [out] = rows_of(reply.request_id)
    assert (call.outcome, out.outcome, out.error_code) == ("denied", "denied", "token_passthrough")
    assert world.requests_to("open") == []
    no_secret_anywhere(token)


# --- the binding to the downstream ------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    ["http://127.0.0.1:{port}/elsewhere", "{base}/crm/steal", "{base}/open/../crm/steal"],
    ids=["other-origin", "other-path", "dot-segments"],
)
def test_a_client_reaches_its_downstream_only(
    world: DownstreamService, live: LiveServer, mint: Minter, where: str
) -> None:
    url = where.format(port=free_port(), base=world.base)
    reply = call_tool_over_mcp(live.url, mint(), "call_url", {"name": "open", "url": url})
    assert reply.is_error
    assert (
        reply.text == f"Downstream 'open' only reaches {world.url('open')}: a request "
        "elsewhere is refused."
    )
    call, [out] = rows_of(reply.request_id)
    assert call.outcome == "denied"
    assert (out.outcome, out.error_code, out.status) == ("denied", "origin_refused", 0)
    assert world.seen == []


def test_undeclared_downstream_is_a_clear_tool_error(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    reply = call_tool_over_mcp(live.url, mint(), "call_sync", {"name": "nope"})
    assert reply.is_error
    assert reply.text == "Downstream 'nope' is not declared in MCPAUTH_DOWNSTREAMS."
    call, outs = rows_of(reply.request_id)
    assert (call.outcome, outs) == ("tool_error", [])


# --- failures are recorded too ----------------------------------------------------------------


def test_timeouts_unreachable_and_error_statuses_are_recorded(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    reply = call_tool_over_mcp(live.url, mint(), "call_sync", {"name": "sluggish"})
    assert reply.is_error
    assert reply.text == "Downstream 'sluggish' did not answer in time (ReadTimeout)."
    call, [out] = rows_of(reply.request_id)
    assert (call.outcome, out.outcome, out.error_code, out.status) == (
        "tool_error",
        "server_error",
        "timeout",
        0,
    )
    world.gate.set()

    handled = call_tool_over_mcp(live.url, mint(), "catch_unavailable", {"name": "dead"})
    assert handled.data == "handled DownstreamUnavailable"  # plain httpx error handling works
    call, [out] = rows_of(handled.request_id)
    assert (call.outcome, out.outcome, out.error_code) == ("ok", "server_error", "unreachable")

    world.fail_with = 503
    failing = call_tool_over_mcp(live.url, mint(), "call_async", {"name": "open"})
    assert failing.data["status"] == 503  # the tool decides what a 503 means
    call, [out] = rows_of(failing.request_id)
    assert (call.outcome, out.outcome, out.status, out.error_code) == (
        "ok",
        "server_error",
        503,
        "http_503",
    )


# --- the admin: a call's detail page lists its outbound calls ---------------------------------


def test_admin_detail_lists_the_outbound_calls_and_links_back(
    world: DownstreamService, live: LiveServer, mint: Minter, admin_client: Any
) -> None:
    set_secret("crm", SHARED_KEY)
    world.api_keys = {SHARED_KEY: "shared"}
    reply = call_tool_over_mcp(live.url, mint(), "call_twice", {"name": "crm"})
    call, outs = rows_of(reply.request_id)
    page = admin_client.get(reverse("admin:audit_auditevent_change", args=[call.pk]))
    html = page.content.decode()
    assert page.status_code == 200 and "Outbound calls" in html
    for out in outs:
        assert reverse("admin:audit_auditevent_change", args=[out.pk]) in html
    assert html.count("/crm/a") == 2 and html.count("/crm/b") == 2
    back = admin_client.get(reverse("admin:audit_auditevent_change", args=[outs[0].pk]))
    assert "Made by" in back.content.decode()
    assert reverse("admin:audit_auditevent_change", args=[call.pk]) in back.content.decode()
    listed = admin_client.get(reverse("admin:audit_auditevent_changelist") + "?kind=outbound")
    assert listed.status_code == 200 and listed.content.decode().count("outbound/crm") >= 4


# --- SQLite: a sync tool's wait does not hold the write lock -----------------------------------

sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's single write lock")


@sqlite_only
def test_sqlite_a_sync_tool_waiting_on_a_downstream_does_not_stall_other_calls(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    token = mint()
    done: dict[str, Any] = {}

    def slow_call() -> None:
        done["slow"] = call_tool_over_mcp(
            live.url, token, "call_then_write", {"name": "slow", "label": "after the wait"}
        )

    worker = threading.Thread(target=slow_call)
    worker.start()
    try:
        assert world.arrived.wait(20), "the slow tool never reached the downstream"
        # The slow tool is inside its transaction, waiting. Another client's call (which
        # writes its own audit row) and a write of the same tenant complete meanwhile; were the
        # lock held, they would wait for the downstream, which only answers after them.
        other = call_tool_over_mcp(live.url, mint(client_id="other"), "count_receipts", {}, 15)
        assert other.data == 0
        assert not world.gate.is_set() and worker.is_alive()
    finally:
        world.gate.set()
        worker.join(30)
    slow = done["slow"]
    assert slow.data["status"] == 200
    assert Receipt.all_tenants.get().label == "after the wait"
    call, [out] = rows_of(slow.request_id)
    assert (call.outcome, out.arguments["write_lock_held"]) == ("ok", False)


@sqlite_only
def test_sqlite_a_tool_that_wrote_first_holds_the_lock_and_says_so(
    world: DownstreamService, live: LiveServer, mint: Minter, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="mcpauth.downstream.sqlite")
    reply = call_tool_over_mcp(
        live.url, mint(), "write_then_call", {"name": "open", "label": "first"}
    )
    assert reply.data["status"] == 200
    call, [out] = rows_of(reply.request_id)
    assert (call.outcome, out.arguments["write_lock_held"]) == ("ok", True)
    assert any("holding SQLite's write lock" in r.getMessage() for r in caplog.records)
    assert Receipt.all_tenants.get().label == "first"  # the write still commits with the row


def test_outbound_rows_of_a_failed_sync_tool_survive_its_rollback(
    world: DownstreamService, live: LiveServer, mint: Minter
) -> None:
    """The tool's transaction rolls back (its write is gone); its outbound call stays on
    record, with the failure row."""
    Tenant.objects.get_or_create(external_id="acme")
    reply = call_tool_over_mcp(
        live.url, mint(), "write_then_call", {"name": "tcrm", "label": "rolled back"}
    )
    assert reply.is_error  # no tcrm key stored for acme: refused after the write
    assert not Receipt.all_tenants.exists()
    call, [out] = rows_of(reply.request_id)
    assert (call.outcome, out.outcome, out.error_code) == ("denied", "denied", "no_secret")
