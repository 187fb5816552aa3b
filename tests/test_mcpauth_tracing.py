"""OpenTelemetry traces of /mcp requests: the span tree, trace context from the ``traceparent``
header or ``params._meta`` (2026-07-28), FastMCP's own span inside ours, the trace id in the
audit row, nothing secret in any attribute, and the console exporter of a real server process."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastmcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from audit.models import AuditEvent
from mcpauth.observability import tracing
from tests.conftest import MCP_ACCEPT, call_tool, free_port
from tests.servers import uvicorn_process
from tests.test_mcpauth_metrics import server_env


class Recorder(SpanProcessor):
    """Keeps the spans that end while a test records (the provider lives for the session)."""

    def __init__(self) -> None:
        self.active = False
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            self.spans.append(span)


@pytest.fixture(scope="session")
def _recorder() -> tuple[TracerProvider, Recorder]:
    provider = TracerProvider()
    recorder = Recorder()
    provider.add_span_processor(recorder)
    return provider, recorder


@pytest.fixture
def spans(_recorder: tuple[TracerProvider, Recorder]) -> Iterator[list[ReadableSpan]]:
    """Tracing on (in process) for this test; the finished spans."""
    provider, recorder = _recorder
    tracing.install(provider)
    recorder.spans.clear()
    recorder.active = True
    try:
        yield recorder.spans
    finally:
        recorder.active = False
        tracing.uninstall()


def hexid(value: int, width: int = 32) -> str:
    return f"{value:0{width}x}"


def new_traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


def request_span(spans: list[ReadableSpan], trace_id: str | None = None) -> ReadableSpan:
    found = wait_for(
        lambda: [
            s
            for s in spans
            if s.name == "POST /mcp" and (trace_id is None or hexid(s.context.trace_id) == trace_id)
        ]
    )
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def tree(spans: list[ReadableSpan], root: ReadableSpan) -> dict[str, ReadableSpan]:
    """The spans of ``root``'s request by name, each exactly once (none left out, none twice)."""
    ids = {root.context.span_id}
    mine = [root]
    grew = True
    while grew:
        grew = False
        for span in spans:
            if span.parent is not None and span.parent.span_id in ids and span not in mine:
                ids.add(span.context.span_id)
                mine.append(span)
                grew = True
    by_name = {s.name: s for s in mine}
    assert len(by_name) == len(mine), sorted(s.name for s in mine)
    return by_name


def modern_call(tool: str, arguments: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "trace-test", "version": "1"},
                **meta,
            },
        },
    }


def modern_headers(token: str, tool: str) -> dict[str, str]:
    return {
        **MCP_ACCEPT,
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }


def test_header_traceparent_joins_the_callers_trace(live, mint, spans):
    traceparent, trace_id, parent_id = new_traceparent()
    token = mint(client_id="traced", org_id="trace-org")
    resp = httpx2.post(
        live.url,
        json=call_tool("create_todo", {"title": "argument-value-never-in-a-span"}),
        headers={**MCP_ACCEPT, "authorization": f"Bearer {token}", "traceparent": traceparent},
    )
    assert resp.status_code == 200 and resp.json()["result"]["isError"] is False
    root = request_span(spans, trace_id)
    assert hexid(root.parent.span_id, 16) == parent_id and root.parent.is_remote
    assert root.kind == trace.SpanKind.SERVER
    by_name = tree(spans, root)
    assert set(by_name) == {
        "POST /mcp",
        "mcp.token",
        "mcp.tenant_scope",
        "mcp.rate_limit",
        "tools/call create_todo",  # FastMCP's own span, inside ours
        "mcp.tool",
        "mcp.audit",
    }
    for name in ("mcp.token", "mcp.tenant_scope", "mcp.rate_limit", "tools/call create_todo"):
        assert by_name[name].parent.span_id == root.context.span_id, name
    fastmcp_span = by_name["tools/call create_todo"]
    assert fastmcp_span.kind == trace.SpanKind.SERVER
    assert by_name["mcp.tool"].parent.span_id == fastmcp_span.context.span_id
    assert by_name["mcp.audit"].parent.span_id == fastmcp_span.context.span_id

    attrs = dict(root.attributes)
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["rpc.system"] == "jsonrpc" and attrs["rpc.method"] == "tools/call"
    assert attrs["mcp.method"] == "tools/call" and attrs["mcp.tool"] == "create_todo"
    assert attrs["mcp.outcome"] == "ok" and attrs["mcp.tenant"] == "trace-org"
    assert attrs["mcp.request_id"] == resp.headers["x-request-id"]
    assert by_name["mcp.audit"].attributes["mcp.outcome"] == "ok"

    row = AuditEvent.objects.get(request_id=resp.headers["x-request-id"])
    assert row.trace_id == trace_id

    for span in by_name.values():  # no token, no argument value, in any attribute
        for key, value in (span.attributes or {}).items():
            assert token not in str(value) and "argument-value" not in str(value), (span, key)


def test_meta_traceparent_of_the_2026_07_28_envelope(live, mint, spans):
    traceparent, trace_id, parent_id = new_traceparent()
    token = mint()
    resp = httpx2.post(
        live.url,
        json=modern_call("list_todos", {}, {"traceparent": traceparent}),
        headers=modern_headers(token, "list_todos"),
    )
    assert resp.status_code == 200, resp.text
    root = request_span(spans, trace_id)
    assert hexid(root.parent.span_id, 16) == parent_id
    assert root.attributes["mcp.protocol.version"] == "2026-07-28"
    by_name = tree(spans, root)
    assert by_name["tools/call list_todos"].parent.span_id == root.context.span_id
    assert AuditEvent.objects.get(request_id=resp.headers["x-request-id"]).trace_id == trace_id


def test_the_header_wins_over_meta(live, mint, spans):
    header, header_trace, _ = new_traceparent()
    meta, meta_trace, _ = new_traceparent()
    resp = httpx2.post(
        live.url,
        json=modern_call("list_todos", {}, {"traceparent": meta}),
        headers={**modern_headers(mint(), "list_todos"), "traceparent": header},
    )
    assert resp.status_code == 200
    root = request_span(spans, header_trace)
    assert not [s for s in spans if hexid(s.context.trace_id) == meta_trace]
    assert tree(spans, root)["tools/call list_todos"].parent.span_id == root.context.span_id


def test_fastmcp_client_carries_its_trace_into_our_tools(live, mint, spans):
    """A real client under a span of its own: fastmcp.Client puts the context in ``_meta``."""
    import asyncio

    tracer = trace.get_tracer("the-agent")

    async def agent() -> int:
        with tracer.start_as_current_span("agent step") as span:
            async with Client(live.url, auth=mint()) as client:
                assert client.protocol_version == "2026-07-28"
                await client.call_tool("list_todos", {})
            return span.get_span_context().trace_id

    trace_id = asyncio.run(agent())
    ours = wait_for(
        lambda: [s for s in spans if s.name == "POST /mcp" and s.context.trace_id == trace_id]
    )
    assert ours, "the server's spans did not join the agent's trace"
    calls = [r for r in ours if "tools/call list_todos" in tree(spans, r)]
    assert len(calls) == 1
    by_name = tree(spans, calls[0])
    assert {"mcp.token", "mcp.rate_limit", "mcp.tool", "mcp.audit"} <= set(by_name)
    # its parent is the client's own span of the call, inside "agent step"
    client_spans = {s.context.span_id: s for s in spans if s.kind == trace.SpanKind.CLIENT}
    assert calls[0].parent.span_id in client_spans


def test_new_trace_without_traceparent_and_its_id_in_the_audit_row(live, mint, spans):
    resp = httpx2.post(
        live.url,
        json=call_tool("list_todos"),
        headers={**MCP_ACCEPT, "authorization": f"Bearer {mint()}"},
    )
    root = request_span(spans)
    assert root.parent is None
    row = AuditEvent.objects.get(request_id=resp.headers["x-request-id"])
    assert row.trace_id == hexid(root.context.trace_id) and len(row.trace_id) == 32


def test_a_refusal_is_traced_with_its_reason(live, mint, spans):
    traceparent, trace_id, _ = new_traceparent()
    resp = httpx2.post(
        live.url,
        json=call_tool("list_todos"),
        headers={
            **MCP_ACCEPT,
            "authorization": f"Bearer {mint(ttl=-120)}",
            "traceparent": traceparent,
        },
    )
    assert resp.status_code == 401
    root = request_span(spans, trace_id)
    assert root.attributes["mcp.outcome"] == "unauthenticated"
    assert root.attributes["error.type"] == "expired"
    assert root.attributes["http.response.status_code"] == 401
    token_span = tree(spans, root)["mcp.token"]
    assert token_span.attributes["error.type"] == "expired"
    assert token_span.status.status_code == trace.StatusCode.ERROR
    assert AuditEvent.objects.get(request_id=resp.headers["x-request-id"]).trace_id == trace_id


def test_a_trace_the_caller_did_not_sample_records_no_span(live, mint, spans):
    """Parent-based sampling (the SDK's default): ``-00`` flags mean no span, not even ours,
    yet the audit row still carries the trace id."""
    trace_id = secrets.token_hex(16)
    resp = httpx2.post(
        live.url,
        json=call_tool("list_todos"),
        headers={
            **MCP_ACCEPT,
            "authorization": f"Bearer {mint()}",
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-00",
        },
    )
    assert resp.status_code == 200
    assert AuditEvent.objects.get(request_id=resp.headers["x-request-id"]).trace_id == trace_id
    time.sleep(0.2)
    assert not [s for s in spans if hexid(s.context.trace_id) == trace_id]


def test_tracing_off_still_records_the_callers_trace_id(live, mint):
    assert not tracing.enabled()
    traceparent, trace_id, _ = new_traceparent()
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {mint()}"}
    sent = httpx2.post(
        live.url, json=call_tool("list_todos"), headers=headers | {"traceparent": traceparent}
    )
    meta, meta_trace, _ = new_traceparent()
    via_meta = httpx2.post(
        live.url,
        json=modern_call("list_todos", {}, {"traceparent": meta}),
        headers=modern_headers(mint(), "list_todos"),
    )
    bogus = httpx2.post(
        live.url, json=call_tool("list_todos"), headers=headers | {"traceparent": "00-zz-yy-01"}
    )
    none = httpx2.post(live.url, json=call_tool("list_todos"), headers=headers)
    got = dict(
        AuditEvent.objects.filter(
            request_id__in=[r.headers["x-request-id"] for r in (sent, via_meta, bogus, none)]
        ).values_list("request_id", "trace_id")
    )
    assert got[sent.headers["x-request-id"]] == trace_id
    assert got[via_meta.headers["x-request-id"]] == meta_trace
    assert got[bogus.headers["x-request-id"]] == ""
    assert got[none.headers["x-request-id"]] == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ""),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""),
        ("garbage", ""),
        ("", ""),
    ],
)
def test_trace_id_of(value, expected):
    assert tracing.trace_id_of(value) == expected


def console_spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporter printed (one per span, over several lines)."""
    decoder = json.JSONDecoder()
    found = []
    for start in (i for i, line in enumerate(text.splitlines(keepends=True)) if line == "{\n"):
        offset = sum(len(line) for line in text.splitlines(keepends=True)[:start])
        obj, _ = decoder.raw_decode(text, offset)
        found.append(obj)
    return found


def test_console_exporter_prints_the_callers_trace(live, mint, idp, tmp_path):
    """A real server process with ``OTEL_TRACES_EXPORTER=console``."""
    output = tmp_path / "server.out"
    env = {
        **server_env(idp.issuer, tmp_path),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "mcp-under-test",
    }
    traceparent, trace_id, parent_id = new_traceparent()
    token = mint(client_id="console-traced", org_id="console-org")
    with uvicorn_process(free_port(), env, output=output) as base:
        resp = httpx2.post(
            f"{base}/mcp",
            json=call_tool("list_todos"),
            headers={**MCP_ACCEPT, "authorization": f"Bearer {token}", "traceparent": traceparent},
        )
        assert resp.status_code == 200
        wait_for(lambda: f'"trace_id": "0x{trace_id}"' in Path(output).read_text())
    printed = [
        s for s in console_spans(output.read_text()) if s["context"]["trace_id"] == f"0x{trace_id}"
    ]
    names = {s["name"] for s in printed}
    assert {"POST /mcp", "mcp.token", "tools/call list_todos", "mcp.tool", "mcp.audit"} <= names
    root = next(s for s in printed if s["name"] == "POST /mcp")
    assert root["parent_id"] == f"0x{parent_id}"
    assert root["resource"]["attributes"]["service.name"] == "mcp-under-test"
    assert token not in output.read_text()
