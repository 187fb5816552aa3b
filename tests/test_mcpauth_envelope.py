"""What a request is, over real HTTP on both protocol eras: a call that never ran is never
recorded as ``ok``, and names outside the MCP alphabets are refused before admission.

* an ``id`` that is not a string or an integer (``true``, ``null``, ``1.5``, ``{}``, ``[1]``) is
  an Invalid Request (-32600) answered with ``id: null``; nothing runs, the row says so;
* a ``tools/call`` without an ``id`` is a notification: accepted (202, no body) and not executed,
  and its row's outcome is ``not_executed``;
* a tool name or method with bidi or control characters, spaces, non-ASCII or too many
  characters is refused (400) before the token is looked at, its row holding the name escaped.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from audit.models import AuditEvent
from mcpauth.runtime.envelope import escaped
from tests.conftest import MCP_ACCEPT, LiveServer, Minter, reply_of
from todos.models import Todo

HANDSHAKE = "2025-11-25"
MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "envelope-test", "version": "1"},
}
MISSING = object()


class Session:
    """Raw JSON-RPC over HTTP as a client of one era speaks it.

    Handshake era: ``initialize`` first, then ``MCP-Protocol-Version`` (and ``Mcp-Session-Id`` if
    the server gave one) on every request. 2026-07-28: no ``initialize``; ``MCP-Protocol-Version``,
    ``Mcp-Method`` and ``Mcp-Name`` headers and the envelope in ``params._meta``.
    """

    def __init__(self, live: LiveServer, token: str, era: str) -> None:
        self.live, self.era = live, era
        self.headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
        if era == HANDSHAKE:
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE,
                    "capabilities": {},
                    "clientInfo": {"name": "envelope-test", "version": "1"},
                },
            }
            resp = httpx2.post(live.url, json=init, headers=self.headers)
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"]["protocolVersion"] == HANDSHAKE
            self.headers["mcp-protocol-version"] = HANDSHAKE
            if "mcp-session-id" in resp.headers:
                self.headers["mcp-session-id"] = resp.headers["mcp-session-id"]
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert httpx2.post(live.url, json=note, headers=self.headers).status_code == 202
        else:
            self.headers["mcp-protocol-version"] = MODERN

    def send(
        self, method: str, params: dict[str, Any] | None = None, id: Any = 1, **headers: str
    ) -> httpx2.Response:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if id is not MISSING:
            message["id"] = id
        params = dict(params or {})
        extra = dict(headers)
        if self.era == MODERN:
            params["_meta"] = MODERN_META
            # headers carry what HTTP can carry; the body is what is judged
            extra.setdefault("mcp-method", method if _header_safe(method) else "x")
            name = params.get("name")
            if isinstance(name, str) and _header_safe(name):
                extra.setdefault("mcp-name", name)
        message["params"] = params
        return httpx2.post(
            self.live.url, content=json.dumps(message).encode(), headers={**self.headers, **extra}
        )

    def call(self, name: str, arguments: dict[str, Any], id: Any = 1) -> httpx2.Response:
        return self.send("tools/call", {"name": name, "arguments": arguments}, id=id)


def _header_safe(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable()


def row_of(resp: httpx2.Response) -> AuditEvent:
    rows = list(AuditEvent.objects.filter(request_id=resp.headers["x-request-id"]))
    assert len(rows) == 1, rows
    return rows[0]


ERAS = pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
TRANSPORTS = pytest.mark.parametrize("fast", [True, False], ids=["single-exchange", "via-sdk"])


@ERAS
@TRANSPORTS
def test_a_call_that_never_runs_is_never_recorded_ok(
    live: LiveServer, mint: Minter, settings: Any, era: str, fast: bool
) -> None:
    settings.MCPAUTH_FAST_TRANSPORT = fast
    session = Session(live, mint(), era)
    for bad_id in (True, False, None, 1.5, {}, [1], {"a": 1}):
        resp = session.call("create_todo", {"title": f"never {bad_id!r}"}, id=bad_id)
        assert resp.status_code == 400, (bad_id, resp.text)
        body = resp.json()
        assert body["id"] is None and body["error"]["code"] == -32600, body
        row = row_of(resp)
        assert (row.outcome, row.status, row.method, row.tool) == (
            "invalid_request",
            400,
            "tools/call",
            "create_todo",
        )
        assert row.error_code == "invalid_id"  # one answer on both eras and transports
    # a request method without an id is a notification: accepted, never answered, never run
    resp = session.call("create_todo", {"title": "never as a notification"}, id=MISSING)
    assert resp.status_code == 202 and resp.content == b""
    row = row_of(resp)
    assert (row.outcome, row.status, row.tool, row.error_code) == (
        "not_executed",
        202,
        "create_todo",
        "notification",
    )
    assert "not executed" in row.error_message
    # whatever it names and whatever the token may do: not run, not answered
    session.headers["authorization"] = f"Bearer {mint(scope='todo:read')}"
    for name in ("create_todo", "no_such_tool"):
        resp = session.call(name, {"title": "never"}, id=MISSING)
        assert (resp.status_code, resp.content) == (202, b""), resp.text
        assert (row_of(resp).outcome, row_of(resp).tool) == ("not_executed", name)
    session.headers["authorization"] = f"Bearer {mint()}"
    assert not Todo.all_tenants.exists()
    # a valid call still runs once and leaves exactly one ok row
    before = AuditEvent.objects.filter(outcome="ok", method="tools/call").count()
    resp = session.call("create_todo", {"title": "runs"}, id="req-1")
    assert resp.status_code == 200 and reply_of(resp)["result"]["isError"] is False, resp.text
    assert reply_of(resp)["id"] == "req-1"
    assert row_of(resp).outcome == "ok"
    assert AuditEvent.objects.filter(outcome="ok", method="tools/call").count() == before + 1
    assert list(Todo.all_tenants.values_list("title", flat=True)) == ["runs"]
    assert not AuditEvent.objects.filter(method="tools/call", outcome="ok", status=202).exists()


@ERAS
def test_other_request_methods_sent_as_notifications_are_not_executed(
    live: LiveServer, mint: Minter, settings: Any, era: str
) -> None:
    settings.AUDIT_RECORD_ALL_METHODS = True
    session = Session(live, mint(), era)
    resp = session.send("tools/list", id=MISSING)
    assert resp.status_code == 202 and resp.content == b""
    assert row_of(resp).outcome == "not_executed"
    resp = session.send("notifications/cancelled", {"requestId": 9, "reason": "test"}, id=MISSING)
    assert resp.status_code == 202
    assert row_of(resp).outcome == "ok"  # a notification, handled as one


BAD_NAMES = {
    "bidi override": "create_todo\u202e",
    "bidi mark": "list\u200f_todos",
    "carriage return": 'x\r=HYPERLINK("http://evil.example")',
    "newline": "create_todo\n",
    "nul": "create_todo\x00",
    "escape sequence": "\x1b[31mcreate_todo",
    "space": "create todo",
    "non-ascii": "cr\u00e9ate_todo",
    "homoglyph": "\u0441reate_todo",  # Cyrillic es
    "lone surrogate": "create_todo\ud800",
    "slash": "todos/create",
    "empty": "",
    "over-long": "list_todos" + "x" * 91,  # 101 characters
    "far over-long": "y" * 5000,
}


@ERAS
@pytest.mark.parametrize("token", ["invalid", "none", "valid"])
def test_tool_names_outside_the_mcp_alphabet_are_refused_before_admission(
    live: LiveServer, mint: Minter, era: str, token: str
) -> None:
    session = Session(live, mint(), era)
    if token == "invalid":
        session.headers["authorization"] = "Bearer not-a-jwt"
    elif token == "none":
        del session.headers["authorization"]
    for label, name in BAD_NAMES.items():
        resp = session.call(name, {"title": "never"})
        assert resp.status_code == 400, (label, resp.status_code, resp.text)
        assert resp.json()["error"]["code"] == -32602, label
        assert "www-authenticate" not in resp.headers  # not an authentication answer
        assert name not in resp.text or not name, label
        row = row_of(resp)
        assert (row.outcome, row.error_code, row.method) == (
            "invalid_request",
            "invalid_tool_name",
            "tools/call",
        ), label
        assert row.client_id == "" and row.subject == ""  # never admitted: no caller
        assert row.tool == escaped(name, 100) and row.tool.isascii() and row.tool.isprintable()
        assert row.arguments == {}
    assert not Todo.all_tenants.exists()


BAD_METHODS = {
    "bidi override": "tools/call\u202e",
    "newline": "tools/list\n",
    "space": "tools list",
    "non-ascii": "t\u00f6ols/list",
    "dollar": "$/cancelRequest",
    "empty": "",
    "over-long": "tools/" + "x" * 59,  # 65 characters
}


@ERAS
def test_methods_outside_the_jsonrpc_alphabet_are_refused_before_admission(
    live: LiveServer, mint: Minter, era: str
) -> None:
    session = Session(live, mint(), era)
    session.headers["authorization"] = "Bearer not-a-jwt"
    for label, method in BAD_METHODS.items():
        for id in (1, MISSING):
            resp = session.send(method, {"name": "create_todo"}, id=id)
            assert resp.status_code == 400, (label, resp.status_code, resp.text)
            assert resp.json()["error"]["code"] == -32600, label
            row = row_of(resp)
            assert (row.outcome, row.error_code) == ("invalid_request", "invalid_method"), label
            assert row.method == escaped(method, 64) and row.method.isascii(), label
            assert row.tool == ""
    # the longest method that fits, and every MCP method, pass the alphabet (then auth applies)
    for method in ("tools/" + "x" * 58, "notifications/roots/list_changed", "logging/setLevel"):
        assert session.send(method).status_code == 401


def test_an_unknown_tool_with_a_well_formed_name_is_still_answered_after_auth(
    live: LiveServer, mint: Minter
) -> None:
    session = Session(live, mint(), HANDSHAKE)
    resp = session.call("list_todos" + "x" * 90, {})  # 100 characters: may exist, does not
    assert resp.status_code == 200 and resp.json()["error"]["code"] == -32602
    assert "Unknown tool" in resp.text
    assert row_of(resp).client_id == "client-1"  # admitted, then refused
    session.headers["authorization"] = "Bearer not-a-jwt"
    assert session.call("no_such_tool", {}).status_code == 401  # the registry stays private
