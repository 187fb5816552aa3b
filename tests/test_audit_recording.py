"""Every MCP call leaves exactly one truthful audit row, committed before the reply."""

from __future__ import annotations

import json
import logging
import re

import httpx2
import pytest

from audit.models import AuditEvent
from tests.conftest import MCP_ACCEPT, call_tool, client_id_with_room, reply_of, rpc
from todos import services
from todos.models import Todo


def post(live, token, body) -> httpx2.Response:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}", "user-agent": "audit-test/1"}
    # ASCII JSON, as most clients send it: a lone surrogate travels as its escape "\ud800"
    content = json.dumps(body).encode()
    return httpx2.post(
        live.url, content=content, headers=headers | {"content-type": "application/json"}
    )


def only_row(**filters) -> AuditEvent:
    rows = list(AuditEvent.objects.filter(**filters))
    assert len(rows) == 1, [(r.method, r.tool, r.outcome) for r in rows]
    return rows[0]


def test_ok_row_has_identity_and_request_id(live, mint):
    token = mint(client_id="auditor", org_id="acme", scope="todo:write")
    resp = post(live, token, call_tool("create_todo", {"title": "audited"}))
    assert resp.status_code == 200
    row = only_row(tool="create_todo")
    assert row.request_id == resp.headers["x-request-id"]
    assert (row.outcome, row.status, row.method) == ("ok", 200, "tools/call")
    assert (row.client_id, row.subject, row.tenant) == ("auditor", "user-of-auditor", "acme")
    assert row.scopes == "todo:write"
    assert len(row.token_id) == 32  # the jti
    assert row.arguments == {"title": "audited"}
    assert row.user_agent == "audit-test/1"
    assert row.client_ip == "127.0.0.1"
    assert row.duration_ms > 0


@pytest.mark.parametrize(
    ("scope", "body", "outcome", "status"),
    [
        ("todo:read", call_tool("get_todo", {"todo_id": "missing"}), "tool_error", 200),
        ("todo:read", call_tool("create_todo", {"title": "x"}), "denied", 403),
        (
            "todo:write",
            call_tool("create_todo", {"title": ["not", "a", "string"]}),
            "invalid_request",
            200,
        ),
        ("todo:write", call_tool("no_such_tool", {}), "invalid_request", 200),
        ("todo:write", rpc("tools/list"), "ok", 200),
    ],
    ids=["tool_error", "denied", "invalid_arguments", "unknown_tool", "tools_list"],
)
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "via-fastmcp"])
def test_one_row_per_call_with_the_right_outcome(
    live, mint, settings, direct, scope, body, outcome, status
):
    settings.MCPAUTH_FAST_TRANSPORT = direct
    resp = post(live, mint(scope=scope), body)
    assert resp.status_code == status
    row = only_row()
    assert (row.outcome, row.status) == (outcome, status)
    assert row.request_id == resp.headers["x-request-id"]


def test_unauthenticated_row_with_reason(live, mint):
    resp = post(live, mint(ttl=-120), call_tool("list_todos"))
    assert resp.status_code == 401
    row = only_row()
    assert (row.outcome, row.status, row.error_code) == ("unauthenticated", 401, "expired")
    assert row.client_id == ""  # an unverified token's claims are never trusted


def test_rate_limited_row(live, mint, settings):
    settings.MCPAUTH_RATE_LIMIT = "1/m"
    token = mint(client_id=client_id_with_room("audited"))
    post(live, token, call_tool("list_todos"))
    assert post(live, token, call_tool("list_todos")).status_code == 429
    assert [r.outcome for r in AuditEvent.objects.order_by("id")] == ["ok", "rate_limited"]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "via-fastmcp"])
def test_exception_inside_tool_is_a_server_error_row(live, mint, monkeypatch, settings, direct):
    settings.MCPAUTH_FAST_TRANSPORT = direct

    def explode(*args, **kwargs):
        raise RuntimeError("database exploded with secret detail")

    monkeypatch.setattr(services, "list_todos", explode)
    resp = post(live, mint(), call_tool("list_todos"))
    result = reply_of(resp)["result"]
    assert result["isError"] is True
    assert "secret detail" not in resp.text
    row = only_row()
    assert (row.outcome, row.error_code) == ("server_error", "RuntimeError")
    assert "secret detail" not in row.error_message


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "via-fastmcp"])
def test_failing_audit_write_rolls_back_the_change(live, mint, monkeypatch, settings, direct):
    settings.MCPAUTH_FAST_TRANSPORT = direct
    import mcpauth.runtime.runner

    def broken_record(*args, **kwargs):
        raise RuntimeError("audit table unavailable")

    # the runner's writer fails; the pipeline's (for the 500 itself) still works
    monkeypatch.setattr(mcpauth.runtime.runner, "record_call", broken_record)
    resp = post(live, mint(), call_tool("create_todo", {"title": "must not persist"}))
    # the SDK's path streams a call's reply (SSE accepted): the error is the stream's last event
    assert resp.status_code == (500 if direct else 200)
    assert reply_of(resp)["error"]["code"] == -32603
    assert not Todo.all_tenants.exists()
    # the failure itself is still recorded by the pipeline's own writer
    assert only_row().outcome == "server_error"


def test_notifications_and_initialize_are_recorded_unless_disabled(live, mint, settings):
    token = mint()
    init = rpc(
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    )
    assert post(live, token, init).status_code == 200
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert post(live, token, note).status_code == 202
    assert sorted(AuditEvent.objects.values_list("method", flat=True)) == [
        "initialize",
        "notifications/initialized",
    ]
    settings.AUDIT_RECORD_ALL_METHODS = False
    post(live, token, rpc("tools/list"))
    post(live, token, call_tool("list_todos"))
    assert AuditEvent.objects.count() == 3
    assert AuditEvent.objects.latest("id").tool == "list_todos"


def test_sensitive_arguments_are_redacted(live, mint):
    args = {
        "title": "x",
        "password": "hunter2",
        "api_token": "abc123",
        "nested": {"Client_Secret": "s3cr3t", "ok": "visible"},
        "notes": "y" * 1000,
    }
    post(live, mint(), call_tool("create_todo", args))
    stored = only_row().arguments
    assert stored["password"] == "[redacted]"
    assert stored["api_token"] == "[redacted]"
    assert stored["nested"] == {"Client_Secret": "[redacted]", "ok": "visible"}
    assert stored["notes"].startswith("y" * 256) and "truncated 1000 chars" in stored["notes"]
    assert "hunter2" not in json.dumps(stored)


def test_no_raw_token_in_audit_rows_or_logs(live, mint, caplog, admin_client):
    caplog.set_level(logging.DEBUG)
    token = mint()
    expired = mint(ttl=-300)
    post(live, token, call_tool("create_todo", {"title": f"Bearer {token}"}))
    post(live, token, call_tool("create_todo", {"title": "t", "description": token}))
    post(live, expired, call_tool("list_todos"))
    post(live, token, call_tool("get_todo", {"todo_id": token}))
    dump = json.dumps(list(AuditEvent.objects.values()), default=str)
    signature = token.rsplit(".", 1)[1]
    for secret in (token, expired, signature, expired.rsplit(".", 1)[1]):
        assert secret not in dump
        assert secret not in caplog.text
    assert AuditEvent.objects.count() == 4
    for row in AuditEvent.objects.all():
        page = admin_client.get(f"/admin/audit/auditevent/{row.pk}/change/")
        assert page.status_code == 200
        assert signature not in page.content.decode()
    listing = admin_client.get("/admin/audit/auditevent/")
    assert listing.status_code == 200 and signature not in listing.content.decode()


@pytest.mark.parametrize(
    "body",
    [
        call_tool("get_todo", {"todo_id": "\x00"}),
        call_tool("list_todos", {"cursor": "a\x00b"}),
        call_tool("create_todo", {"title": "a\x00b"}),
        call_tool("create_todo", {"title": "ok", "descr\x00iption": "x"}),
        call_tool("no\x00tool", {}),
        call_tool("get_todo", {"todo_id": "\ud800abc"}),
        call_tool("list_todos", {"cursor": "a\udfffb"}),
        call_tool("create_todo", {"title": "a\ud800"}),
        call_tool("create_todo", {"title": "ok", "description": "\udc00"}),
        call_tool("create_todo", {"title": "ok", "descr\ud800iption": "x"}),
        call_tool("no\udfbftool", {}),
    ],
    ids=[
        "id",
        "cursor",
        "title",
        "key",
        "tool-name",
        "surrogate-id",
        "surrogate-cursor",
        "surrogate-title",
        "surrogate-description",
        "surrogate-key",
        "surrogate-tool-name",
    ],
)
def test_unstorable_characters_are_audited_not_a_crash(live, mint, body):
    """NUL and lone surrogates are valid JSON (``"\\u0000"``, ``"\\ud800"``) but no database
    text column takes them (PostgreSQL refuses NUL, nothing encodes a lone surrogate as UTF-8):
    stored as U+FFFD, and the call answered as any other bad input (a tool name, which no tool
    can have, is refused before admission with 400 and stored escaped)."""
    resp = post(live, mint(), body)
    name = body["params"]["name"]
    assert resp.status_code == (400 if name not in TOOL_NAMES else 200), resp.text
    row = only_row()
    assert row.outcome in {"tool_error", "invalid_request"}, (row.outcome, row.error_message)
    stored = json.dumps(row.arguments, ensure_ascii=False) + row.tool + row.error_message
    assert not UNSTORABLE.search(stored)


TOOL_NAMES = {"get_todo", "list_todos", "create_todo"}
UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def test_nul_in_unauthenticated_request_is_still_a_401(live, mint):
    body = call_tool("get_todo", {"todo_id": "\x00"})
    resp = httpx2.post(live.url, json=body, headers=MCP_ACCEPT)
    assert resp.status_code == 401
    assert only_row().outcome == "unauthenticated"
