"""Progress and log notifications, governed, over HTTP.

``ctx.report_progress`` and ``ctx.info`` reach a client that accepts ``text/event-stream`` on
both eras, as they reach it from plain FastMCP's default HTTP app (stateful, SSE): the same
progress and the same log messages, through ``fastmcp.Client`` (auto and legacy) and the ``mcp``
SDK (its handshake-era ``ClientSession`` and its 2026-07-28 ``Client``), against 2 uvicorn
workers on PostgreSQL and Redis, and through the SDK's own transports
(``MCPAUTH_FAST_TRANSPORT = False``). On the wire:

* a call that notifies is answered with an SSE stream, the JSON-RPC reply its last event,
  written after the call's audit row;
* a call that notifies nothing is one JSON body, as before (the single-exchange fast path);
* a client that accepts only JSON gets one JSON body, its notifications dropped, as before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from fastmcp import Client
from mcp import Client as SDKClient
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from tests.conftest import LiveServer, Minter
from tests.test_mcpauth_zoo import PlainServer, seed_zoo_scopes

#: the tests against the 2-worker server need PostgreSQL and Redis; the rest run anywhere
SHARED = pytest.mark.needs_shared_services

HANDSHAKE, MODERN = "2025-11-25", "2026-07-28"
STEPS = 3


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainServer]:
    with PlainServer(default_transport=True) as server:
        yield server


@pytest.fixture
def zoo(transactional_db: None) -> None:
    seed_zoo_scopes()


class Heard:
    """What one client was told besides the reply."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, float | None, str | None]] = []
        self.logs: list[Any] = []

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))

    async def on_log(self, message: Any) -> None:
        self.logs.append((message.level, message.data))


@asynccontextmanager
async def fastmcp_client(url: str, token: str, mode: str, heard: Heard) -> AsyncIterator[Any]:
    async with Client(
        url, auth=token, mode=mode, progress_handler=heard.on_progress, log_handler=heard.on_log
    ) as client:
        yield lambda name, args: client.call_tool(name, args, raise_on_error=False)


@asynccontextmanager
async def sdk_session(url: str, token: str, mode: str, heard: Heard) -> AsyncIterator[Any]:
    """The ``mcp`` SDK: ``ClientSession`` with the handshake, or its ``Client`` (2026-07-28)."""

    async def on_log(params: Any) -> None:
        await heard.on_log(params)

    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as http:
        if mode == "legacy":
            async with (
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write, logging_callback=on_log) as session,
            ):
                await session.initialize()
                yield lambda name, args: session.call_tool(
                    name, args, progress_callback=heard.on_progress
                )
            return
        async with SDKClient(
            streamable_http_client(url, http_client=http),
            logging_callback=on_log,
            log_level="debug",
        ) as client:
            yield lambda name, args: client.call_tool(
                name, args, progress_callback=heard.on_progress
            )


CLIENTS = {"fastmcp": fastmcp_client, "mcp-sdk": sdk_session}


async def heard_from(url: str, token: str, client: str, mode: str) -> tuple[Heard, Any]:
    heard = Heard()
    async with CLIENTS[client](url, token, mode, heard) as call:
        result = await call("zoo_context", {"steps": STEPS})
    return heard, result


@SHARED
@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("client", ["fastmcp", "mcp-sdk"])
async def test_notifications_reach_sse_clients_as_from_plain_fastmcp(
    zoo_workers: str, plain: PlainServer, zoo: None, mint: Minter, client: str, mode: str
) -> None:
    token = mint(scope="zoo:all")
    ours, result = await heard_from(zoo_workers, token, client, mode)
    theirs, reference = await heard_from(plain.url, token, client, mode)
    assert (
        ours.progress == theirs.progress == [(i + 1, STEPS, f"step {i + 1}") for i in range(STEPS)]
    )
    assert ours.logs == theirs.logs
    assert ("info", {"msg": f"starting {STEPS} steps", "extra": None}) in ours.logs
    assert result.structured_content == reference.structured_content
    audited = await AuditEvent.objects.aget(method="tools/call", tool="zoo_context")
    assert audited.outcome == "ok"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_notifications_through_the_sdks_transports(
    live: LiveServer, zoo: None, mint: Minter, settings: Any, mode: str
) -> None:
    """``MCPAUTH_FAST_TRANSPORT = False``: the SDK's transports in their SSE mode."""
    settings.MCPAUTH_FAST_TRANSPORT = False
    heard, result = await heard_from(live.url, mint(scope="zoo:all"), "fastmcp", mode)
    assert [p for p, _, _ in heard.progress] == [1, 2, 3]
    assert any(data["msg"] == f"starting {STEPS} steps" for _, data in heard.logs)
    assert result.structured_content["steps"] == STEPS


def post(url: str, token: str, era: str, tool: str, args: dict[str, Any], accept: str) -> Any:
    """A raw ``tools/call`` with a progress token (and, on 2026-07-28, the log opt-in)."""
    meta: dict[str, Any] = {"progressToken": "p-1"}
    headers = {
        "accept": accept,
        "content-type": "application/json",
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": era,
    }
    if era == MODERN:
        meta |= {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/logLevel": "debug",
        }
        headers |= {"mcp-method": "tools/call", "mcp-name": tool}
    body = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": tool, "arguments": args, "_meta": meta},
    }
    return httpx2.stream("POST", url, json=body, headers=headers, timeout=20)


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:])


@SHARED
@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
def test_a_call_that_notifies_streams_its_row_first(
    zoo_workers: str, zoo: None, mint: Minter, era: str
) -> None:
    with post(
        zoo_workers,
        mint(scope="zoo:all"),
        era,
        "zoo_context",
        {"steps": STEPS},
        "application/json, text/event-stream",
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        request_id = resp.headers["x-request-id"]  # the governance headers are there too
        seen = []
        for message in events(resp.iter_lines()):
            seen.append(message)
            if "id" in message:
                # the reply is the last event, and its row was committed before it was sent
                assert AuditEvent.objects.filter(request_id=request_id, outcome="ok").exists()
    progress = [m["params"] for m in seen if m.get("method") == "notifications/progress"]
    assert progress == [
        {"progressToken": "p-1", "progress": i + 1, "total": STEPS, "message": f"step {i + 1}"}
        for i in range(STEPS)
    ]
    assert any(m.get("method") == "notifications/message" for m in seen)
    assert seen[-1]["id"] == 9 and seen[-1]["result"]["structuredContent"]["steps"] == STEPS
    assert sum("id" in m for m in seen) == 1


@SHARED
@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
def test_a_call_that_notifies_nothing_is_one_json_body(
    zoo_workers: str, zoo: None, mint: Minter, era: str
) -> None:
    with post(
        zoo_workers,
        mint(scope="zoo:all"),
        era,
        "zoo_str",
        {"text": "ab"},
        "application/json, text/event-stream",
    ) as resp:
        resp.read()
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["result"]["structuredContent"] == {"result": "abab"}


@SHARED
@pytest.mark.parametrize("era", [HANDSHAKE, MODERN])
def test_json_only_clients_keep_one_json_reply(
    zoo_workers: str, zoo: None, mint: Minter, era: str
) -> None:
    with post(
        zoo_workers, mint(scope="zoo:all"), era, "zoo_context", {"steps": STEPS}, "application/json"
    ) as resp:
        resp.read()
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    reply = resp.json()
    assert reply["id"] == 9 and reply["result"]["structuredContent"]["steps"] == STEPS
    assert b"notifications/" not in resp.content
    audited = AuditEvent.objects.get(request_id=resp.headers["x-request-id"])
    assert audited.outcome == "ok"


async def test_a_failing_call_that_notified_ends_its_stream_with_its_error(
    live: LiveServer, zoo: None, mint: Minter
) -> None:
    """The audit rules hold on a stream: a body that notified, then failed, has its
    ``server_error`` row, and the client FastMCP's masked error as the last event."""
    heard = Heard()
    async with fastmcp_client(live.url, mint(scope="zoo:all"), "auto", heard) as call:
        result = await call("zoo_notify_then_fail", {})
    assert [p for p, _, _ in heard.progress] == [1, 2]
    assert result.is_error and "secret" not in str(result.content)
    audited = await AuditEvent.objects.aget(method="tools/call", tool="zoo_notify_then_fail")
    assert (audited.outcome, audited.error_code) == ("server_error", "RuntimeError")
