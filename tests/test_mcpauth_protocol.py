"""Malformed MCP traffic and DNS rebinding: JSON-RPC errors, never a 500 or a traceback."""

from __future__ import annotations

import httpx2
import pytest

from audit.models import AuditEvent
from tests.conftest import MCP_ACCEPT, call_tool, rpc


def raw_post(live, token, content: bytes, **headers) -> httpx2.Response:
    hdrs = {**MCP_ACCEPT, "authorization": f"Bearer {token}", **headers}
    return httpx2.post(live.url, content=content, headers=hdrs)


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, -32700),
        (b'"a string"', 400, -32600),
        (b"[1, 2, 3]", 400, -32600),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]', 400, -32600),
        (b'{"id": 1, "method": "tools/list"}', 400, -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}', 400, -32600),
        (b"[" * 5000 + b"]" * 5000, 400, -32600),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":'
            + b'{"a":' * 100
            + b"1"
            + b"}" * 100
            + b"}",
            400,
            -32600,
        ),
        (b"\xff\xfe\x00garbage", 400, -32700),
    ],
    ids=[
        "invalid-json",
        "non-object",
        "array",
        "batch",
        "no-jsonrpc",
        "call-no-name",
        "deep-array",
        "deep-object",
        "binary",
    ],
)
def test_malformed_bodies_get_jsonrpc_errors(live, mint, content, status, code):
    resp = raw_post(live, mint(), content)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    assert "Traceback" not in resp.text
    assert AuditEvent.objects.get().outcome == "invalid_request"


def test_unknown_method_and_unknown_tool(live, mint):
    token = mint()
    resp = raw_post(live, token, httpx2.Request("POST", "/", json=rpc("no/such")).content)
    assert resp.status_code == 200
    assert resp.json()["error"]["code"] == -32601
    resp = raw_post(live, token, httpx2.Request("POST", "/", json=call_tool("nope")).content)
    assert resp.status_code == 200
    assert resp.json()["error"]["code"] == -32602
    assert "nope" in resp.json()["error"]["message"]


def test_wrong_argument_types_are_tool_errors(live, mint):
    body = httpx2.Request("POST", "/", json=call_tool("list_todos", {"limit": "lots"})).content
    resp = raw_post(live, mint(), body)
    assert resp.status_code == 200
    assert resp.json()["result"]["isError"] is True
    assert AuditEvent.objects.get().outcome == "invalid_request"


def test_oversized_body_is_refused_before_parsing(live, mint, settings):
    settings.MCPAUTH_MAX_BODY_BYTES = 10_000
    big = httpx2.Request(
        "POST", "/", json=call_tool("create_todo", {"title": "x" * 20_000})
    ).content
    resp = raw_post(live, mint(), big)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == -32600


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "evil.example.com"},
        {"host": "evil.example.com:8000"},
        {"origin": "http://evil.example.com"},
        {"origin": "null"},
    ],
)
def test_dns_rebinding_is_refused_before_any_tool_runs(live, mint, headers):
    body = httpx2.Request("POST", "/", json=call_tool("create_todo", {"title": "x"})).content
    resp = raw_post(live, mint(), body, **headers)
    assert resp.status_code == 403
    assert resp.json()["error"]["data"]["error_description"].endswith("not allowed.")
    from todos.models import Todo

    assert not Todo.all_tenants.exists()


def test_origin_must_match_scheme_host_and_port(live, mint, settings):
    """Security review item 9: scheme and port count (BASE_URL is http://127.0.0.1:8000)."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    for origin in ("http://127.0.0.1:8000", "http://127.0.0.1:8000/", "HTTP://127.0.0.1:8000"):
        assert raw_post(live, mint(), body, origin=origin).status_code == 200, origin
    for origin in (
        "http://127.0.0.1:9999",
        "https://127.0.0.1:8000",
        f"http://127.0.0.1:{live.port}",
        "http://localhost",
        "http://127.0.0.1:8000/path",
    ):
        assert raw_post(live, mint(), body, origin=origin).status_code == 403, origin
    settings.MCPAUTH_ALLOWED_ORIGINS = "https://app.example.org:8443"
    assert raw_post(live, mint(), body, origin="https://app.example.org:8443").status_code == 200
    assert raw_post(live, mint(), body, origin="https://app.example.org").status_code == 403
    # a loopback BASE_URL may open loopback origins on any port, only when asked to
    settings.MCPAUTH_LOOPBACK_ORIGINS_ANY_PORT = True
    for origin in (f"http://127.0.0.1:{live.port}", "http://localhost:6274", "http://[::1]:3000"):
        assert raw_post(live, mint(), body, origin=origin).status_code == 200, origin
    assert raw_post(live, mint(), body, origin="http://evil.example.com").status_code == 403


def test_host_names_are_case_insensitive_and_may_end_in_a_dot(live, mint):
    """Security review item 10: ``LOCALHOST`` and ``localhost.`` are the name ``localhost`` (as
    Django's ALLOWED_HOSTS has it), which an attacker's DNS cannot rebind; accepted."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    for host in ("LOCALHOST", "localhost.", f"LocalHost.:{live.port}", "127.0.0.1"):
        assert raw_post(live, mint(), body, host=host).status_code == 200, host
    for host in ("localhost.evil.test", "evil.test", "127.0.0.1.nip.io"):
        assert raw_post(live, mint(), body, host=host).status_code == 403, host


def test_get_and_delete_need_a_token_too(live, mint):
    assert httpx2.get(live.url, headers=MCP_ACCEPT).status_code == 401
    resp = httpx2.get(live.url, headers={**MCP_ACCEPT, "authorization": f"Bearer {mint()}"})
    assert resp.status_code == 405


@pytest.mark.parametrize("fast", [True, False], ids=["single-exchange", "via-sdk"])
def test_content_type_is_checked_as_the_sdk_checks_it_on_both_eras(live, mint, settings, fast):
    """A POST that is not ``application/json`` is refused before any tool runs, on both eras and
    on both transports, with the SDK's own answer (the 2026-07-28 entry: 400)."""
    import json

    settings.MCPAUTH_FAST_TRANSPORT = fast
    modern = {
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "create_todo",
    }
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    message = call_tool("create_todo", {"title": "never written"})
    message["params"]["_meta"] = meta
    body = json.dumps(message).encode()
    refused = raw_post(live, mint(), body, **{"content-type": "text/plain"}, **modern)
    assert refused.status_code == 400
    legacy = json.dumps(call_tool("create_todo", {"title": "never written"})).encode()
    refused_legacy = raw_post(live, mint(), legacy, **{"content-type": "text/plain"})
    assert refused_legacy.status_code in (400, 415)
    from todos.models import Todo

    assert not Todo.all_tenants.filter(title="never written").exists()
    ok = raw_post(
        live, mint(), body, **{"content-type": "application/json; charset=utf-8"}, **modern
    )
    assert ok.status_code == 200 and ok.json()["result"]["isError"] is False


def test_a_tool_name_longer_than_any_registered_is_refused_never_cut_to_a_prefix(live, mint):
    """The audit row keeps 100 characters of a name; the name itself is never cut to find (and
    authorise) a tool: ``list_todos`` followed by 100 more characters is no tool name at all
    (``mcpauth.runtime.registry.is_tool_name``), refused before admission."""
    for name in ("list_todos" + "x" * 100, "list_todos".ljust(101)):
        resp = httpx2.post(
            live.url,
            json=call_tool(name, {}),
            headers={**MCP_ACCEPT, "authorization": f"Bearer {mint()}"},
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == -32602
        assert "result" not in resp.json()
    rows = list(AuditEvent.objects.filter(method="tools/call").values_list("tool", "outcome"))
    assert len(rows) == 2 and all(len(tool) == 100 and outcome != "ok" for tool, outcome in rows)
