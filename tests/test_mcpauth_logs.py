"""Structured logs: ``LOG_FORMAT=json`` gives one JSON object per line, each /mcp request logs
exactly one access line (and uvicorn none), with no token and no argument value in it."""

from __future__ import annotations

import json
import logging
import secrets
import sys

import httpx2
import pytest

from mcpauth.observability.logs import ACCESS_FIELDS, FIELDS_ATTR, JSONFormatter, TextFormatter
from tests.conftest import MCP_ACCEPT, call_tool, free_port, rpc
from tests.servers import uvicorn_process
from tests.test_mcpauth_metrics import server_env

SECRET_ARGUMENT = "do-not-log-this-title-7c1f"


def test_json_access_lines_one_per_request_no_secrets(live, mint, idp, tmp_path):
    output = tmp_path / "server.log"
    env = {**server_env(idp.issuer, tmp_path), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    token = mint(client_id="logged-client", org_id="logged-org")
    trace_id = secrets.token_hex(16)
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    sent: list[tuple[httpx2.Response, str]] = []
    with uvicorn_process(free_port(), env, output=output) as base, httpx2.Client() as http:
        url = f"{base}/mcp"

        def send(body: dict, expected_tool: str = "", **extra: str) -> None:
            resp = http.post(url, json=body, headers={**headers, **extra})
            sent.append((resp, expected_tool))

        send(call_tool("create_todo", {"title": SECRET_ARGUMENT}), "create_todo")
        send(call_tool("list_todos"), "list_todos", traceparent=f"00-{trace_id}-{'a' * 16}-01")
        send(rpc("tools/list"))
        send(call_tool("list_todos"), "list_todos", authorization="Bearer not-a-jwt")
        resp = http.post(url, json=call_tool("list_todos"), headers=MCP_ACCEPT)  # no token
        sent.append((resp, "list_todos"))
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert http.get(f"{base}/health?probe=secret-query").status_code == 200  # Django side
    # the server has stopped: its output is complete
    lines = [line for line in output.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record)
        records.append(record)
    access = [r for r in records if r["logger"] == "mcpauth.access" and r["path"] == "/mcp"]
    assert not [r for r in records if r["logger"] == "uvicorn.access"]
    assert len(access) == len(sent)
    health = [r for r in records if r["logger"] == "mcpauth.access" and r["path"] == "/health"]
    # the readiness probes of tests/servers.py and ours, none with its query string
    assert len(health) >= 2 and {r["status"] for r in health} == {200}
    by_request = {r["request_id"]: r for r in access}
    for resp, tool in sent:
        line = by_request[resp.headers["x-request-id"]]
        assert set(ACCESS_FIELDS) <= set(line)
        assert line["status"] == resp.status_code
        assert line["tool"] == tool and line["path"] == "/mcp" and line["http_method"] == "POST"
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    ok = by_request[sent[0][0].headers["x-request-id"]]
    assert (ok["method"], ok["outcome"], ok["client_id"], ok["tenant"]) == (
        "tools/call",
        "ok",
        "logged-client",
        "logged-org",
    )
    assert by_request[sent[1][0].headers["x-request-id"]]["trace_id"] == trace_id
    assert by_request[sent[3][0].headers["x-request-id"]]["outcome"] == "unauthenticated"
    assert by_request[sent[5][0].headers["x-request-id"]]["method"] == "notifications/initialized"
    text = output.read_text()
    assert token not in text and "not-a-jwt" not in text and SECRET_ARGUMENT not in text
    assert "secret-query" not in text


def test_text_access_line_is_readable(live, mint, caplog):
    caplog.set_level(logging.INFO, logger="mcpauth.access")
    resp = httpx2.post(
        live.url,
        json=call_tool("list_todos"),
        headers={**MCP_ACCEPT, "authorization": f"Bearer {mint(client_id='text client')}"},
    )
    records = [r for r in caplog.records if r.name == "mcpauth.access"]
    assert len(records) == 1
    line = TextFormatter().format(records[0])
    assert "\n" not in line
    assert " INFO mcpauth.access POST /mcp tools/call 200 " in line
    assert f"request_id={resp.headers['x-request-id']} " in line
    assert 'client_id="text client" ' in line  # quoted when it has a space
    assert "outcome=ok " in line and "tool=list_todos " in line and "tenant=acme " in line


def test_json_formatter_keeps_a_traceback_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
        record.exc_info = sys.exc_info()
    line = JSONFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "failed here" and data["level"] == "ERROR"
    assert "ValueError: boom" in data["exc_info"] and data["time"].endswith("Z")


@pytest.mark.parametrize("formatter", [JSONFormatter(), TextFormatter()])
def test_access_fields_never_break_the_line(formatter):
    record = logging.LogRecord("mcpauth.access", logging.INFO, __file__, 1, "access", (), None)
    setattr(record, FIELDS_ATTR, {"client_id": 'evil\n"client"=x', "tool": ""})
    line = formatter.format(record)
    assert "\n" not in line


def test_a_path_with_a_newline_cannot_forge_an_access_line(caplog):
    from mcpauth.observability import logs

    caplog.set_level(logging.INFO, logger="mcpauth.access")
    forged = "/x\n2026-01-01 00:00:00,000 INFO mcpauth.access POST /admin/login/ 302"
    fields = {**dict.fromkeys(logs.ACCESS_FIELDS), "http_method": "GET", "path": forged}
    logs.access({**fields, "method": "", "status": 404})
    (record,) = [r for r in caplog.records if r.name == "mcpauth.access"]
    text = TextFormatter().format(record)
    assert "\n" not in text
    assert text.split(" request_id=")[0].endswith(
        r"GET /x\n2026-01-01 00:00:00,000 INFO "
        r"mcpauth.access POST /admin/login/ 302 - 404"
    )
    message = json.loads(JSONFormatter().format(record))["message"]
    assert "\n" not in message and message.startswith(r"GET /x\n2026-01-01")
