"""A client that gives up: the call is stopped as plain FastMCP stops it, and audited so.

Against 2 uvicorn workers on PostgreSQL and Redis (and plain FastMCP's default HTTP app as the
reference):

* 2026-07-28 (``fastmcp.Client`` auto): a client that times out closes its request's stream;
  the async body is cancelled (it never writes what it would have written at its end) and its
  row says ``cancelled`` (``disconnected``, status 499), not ``ok``;
* the handshake era (``fastmcp.Client`` legacy, the ``mcp`` SDK's ``ClientSession``): the client
  posts ``notifications/cancelled``, which any worker may receive; the call is cancelled all
  the same, and the two rows name each other;
* a sync body cannot be interrupted (a thread): it runs to its end and keeps its writes, as on
  plain FastMCP, and its row still says ``cancelled``;
* a quick call whose client is gone before the reply is ``cancelled`` too; a cancel for a call
  that has not registered yet is caught; another caller cannot cancel a call.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from asgiref.sync import sync_to_async
from fastmcp import Client
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from tests.conftest import LiveServer, Minter, reply_of
from tests.test_mcpauth_zoo import PlainServer, seed_zoo_scopes
from tests.zoo.models import Exhibit

pytestmark = [pytest.mark.needs_shared_services]

HANDSHAKE = "2025-11-25"
#: the slow tool's length, and how long the client waits for it
SLOW_SECONDS, GIVE_UP_AFTER = 1.5, 0.6
#: how long to wait for what a call would have done had it not been stopped (bounded)
SETTLE_SECONDS = SLOW_SECONDS + 1.5


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainServer]:
    with PlainServer(default_transport=True) as server:
        yield server


@pytest.fixture
def zoo(transactional_db: None) -> None:
    seed_zoo_scopes()


async def give_up(url: str, token: str, mode: str, tool: str, args: dict[str, Any]) -> None:
    async with Client(url, auth=token, mode=mode) as client:
        with pytest.raises(MCPError, match="timed out"):
            await client.call_tool(tool, args, timeout=GIVE_UP_AFTER)
        await anyio.sleep(0.3)  # (legacy: the client posts notifications/cancelled meanwhile)


async def rows(**filters: Any) -> list[AuditEvent]:
    return [r async for r in AuditEvent.objects.filter(**filters).order_by("id")]


async def settled(label: str) -> bool:
    """Whether ``label`` was written, once a call that was not stopped would have written it."""
    await anyio.sleep(SETTLE_SECONDS)
    return await Exhibit.objects.filter(label=label).aexists()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_async_call_is_stopped_as_plain_fastmcp_stops_it(
    zoo_workers: str, plain: PlainServer, zoo: None, mint: Minter, mode: str
) -> None:
    token = mint(scope="zoo:all")
    ours, theirs = f"ours-{mode}-{uuid.uuid4().hex[:8]}", f"plain-{mode}-{uuid.uuid4().hex[:8]}"
    await give_up(zoo_workers, token, mode, "zoo_slow", {"seconds": SLOW_SECONDS, "label": ours})
    await give_up(plain.url, token, mode, "zoo_slow", {"seconds": SLOW_SECONDS, "label": theirs})
    assert not await settled(ours)
    assert not await Exhibit.objects.filter(label=theirs).aexists()  # plain FastMCP stops it too
    (call,) = await rows(method="tools/call")
    assert call.outcome == "cancelled"
    assert call.duration_ms < SLOW_SECONDS * 1000
    if mode == "auto":  # 2026-07-28: closing the request's stream is the cancel
        assert (call.error_code, call.status) == ("disconnected", 499)
        assert "went away while the body ran" in call.error_message
        return
    (note,) = await rows(method="notifications/cancelled")
    assert (call.error_code, call.status) == ("notifications/cancelled", 200)
    assert call.arguments["@mcpauth"] == {"cancelled_by": note.request_id}
    assert note.arguments["@mcpauth"] == {"cancels": call.request_id, "rpc_id": 2}


async def test_the_sdks_session_cancels_through_any_worker(
    zoo_workers: str, zoo: None, mint: Minter
) -> None:
    """The ``mcp`` SDK's handshake-era session: its read timeout posts the cancel."""
    headers = {"Authorization": f"Bearer {mint(scope='zoo:all')}"}
    label = f"sdk-{uuid.uuid4().hex[:8]}"
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(zoo_workers, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        with pytest.raises(MCPError, match="timed out"):
            await session.call_tool(
                "zoo_slow",
                {"seconds": SLOW_SECONDS, "label": label},
                read_timeout_seconds=GIVE_UP_AFTER,
            )
        await anyio.sleep(0.3)
    assert not await settled(label)
    (call,) = await rows(method="tools/call")
    (note,) = await rows(method="notifications/cancelled")
    assert (call.outcome, call.error_code) == ("cancelled", "notifications/cancelled")
    assert note.arguments["@mcpauth"]["cancels"] == call.request_id


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_sync_body_runs_to_its_end_and_says_so(
    zoo_workers: str, plain: PlainServer, zoo: None, mint: Minter, mode: str
) -> None:
    token = mint(scope="zoo:all")
    ours, theirs = f"sync-ours-{uuid.uuid4().hex[:8]}", f"sync-plain-{uuid.uuid4().hex[:8]}"
    args = {"seconds": SLOW_SECONDS}
    await give_up(zoo_workers, token, mode, "zoo_slow_write", {**args, "label": ours})
    await give_up(plain.url, token, mode, "zoo_slow_write", {**args, "label": theirs})
    assert await settled(ours)
    assert await Exhibit.objects.filter(label=theirs).aexists()
    (call,) = await rows(method="tools/call")
    assert call.outcome == "cancelled"
    assert "ran to completion" in call.error_message


def raw_call(url: str, token: str, body: dict[str, Any], era: str | None = None) -> bytes:
    headers = [
        f"POST {urlsplit(url).path} HTTP/1.1",
        f"Host: {urlsplit(url).netloc}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Authorization: Bearer {token}",
    ]
    if era:
        headers.append(f"MCP-Protocol-Version: {era}")
    data = json.dumps(body).encode()
    headers.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + data


def test_a_quick_call_whose_client_left_is_cancelled(
    zoo_workers: str, zoo: None, mint: Minter
) -> None:
    """Gone while a quick call runs (before it listens for a disconnect): its row still knows,
    from the server's own flag, asked before the row is written."""
    label = f"quick-{uuid.uuid4().hex[:8]}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "zoo_slow_write", "arguments": {"seconds": 0.03, "label": label}},
    }
    parts = urlsplit(zoo_workers)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(raw_call(zoo_workers, mint(scope="zoo:all"), body))
        time.sleep(0.01)  # (the body is read: the request is not lost with the connection)
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(method="tools/call").exists():
        assert time.monotonic() < deadline, "no row"
        time.sleep(0.05)
    call = AuditEvent.objects.get(method="tools/call")
    assert (call.outcome, call.error_code, call.status) == ("cancelled", "disconnected", 499)
    # a sync body that started runs to its end (on a slow machine it may not have started)
    ran = "ran to completion" in call.error_message
    assert ran or "before the body ran" in call.error_message, call.error_message
    assert Exhibit.objects.filter(label=label).exists() is ran


def legacy_headers(token: str) -> dict[str, str]:
    return {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": HANDSHAKE,
    }


def cancel(url: str, token: str, rpc_id: Any) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rpc_id}}
    headers = {**legacy_headers(token), "connection": "close"}
    return httpx2.post(url, json=body, headers=headers, timeout=10)


async def test_an_early_cancel_and_another_callers_cancel(
    zoo_workers: str, zoo: None, mint: Minter
) -> None:
    """A cancel sent before the call registered (its first 0.2 s) still stops it; a cancel
    from another caller naming the same id stops nothing."""
    owner = mint(scope="zoo:all", client_id="keeper-a")
    intruder = mint(scope="zoo:all", client_id="keeper-b")

    async def slow(rpc_id: int, label: str) -> httpx2.Response:
        body = {
            "jsonrpc": "2.0",
            "id": rpc_id,
            "method": "tools/call",
            "params": {"name": "zoo_slow", "arguments": {"seconds": 1.0, "label": label}},
        }
        async with httpx2.AsyncClient(timeout=20) as http:
            return await http.post(zoo_workers, json=body, headers=legacy_headers(owner))

    stopped, kept = f"early-{uuid.uuid4().hex[:8]}", f"kept-{uuid.uuid4().hex[:8]}"
    first = asyncio.create_task(slow(41, stopped))
    second = asyncio.create_task(slow(42, kept))
    await anyio.sleep(0.05)
    assert (await sync_to_async(cancel)(zoo_workers, owner, 41)).status_code == 202
    assert (await sync_to_async(cancel)(zoo_workers, intruder, 42)).status_code == 202
    answered = await first
    # still connected: answered as the SDK's 2025-era transport answers a cancelled request
    assert reply_of(answered)["error"] == {"code": -32800, "message": "Request cancelled"}
    assert (await second).status_code == 200
    assert not await settled(stopped)
    assert await Exhibit.objects.filter(label=kept).aexists()
    by_tool = {r.arguments["label"]: r for r in await rows(method="tools/call")}
    notes = {r.client_id: r for r in await rows(method="notifications/cancelled")}
    assert by_tool[stopped].outcome == "cancelled"
    assert by_tool[stopped].arguments["@mcpauth"] == {"cancelled_by": notes["keeper-a"].request_id}
    assert by_tool[kept].outcome == "ok"
    assert notes["keeper-b"].arguments["@mcpauth"] == {"cancels": None, "rpc_id": 42}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_calls_through_the_sdks_transports_are_stopped_too(
    live: LiveServer, zoo: None, mint: Minter, settings: Any, mode: str
) -> None:
    """``MCPAUTH_FAST_TRANSPORT = False``: the SDK's own transports run under the same watcher."""
    settings.MCPAUTH_FAST_TRANSPORT = False
    label = f"sdk-path-{mode}-{uuid.uuid4().hex[:8]}"
    token = mint(scope="zoo:all")
    await give_up(live.url, token, mode, "zoo_slow", {"seconds": SLOW_SECONDS, "label": label})
    assert not await settled(label)
    (call,) = await rows(method="tools/call")
    expected = "disconnected" if mode == "auto" else "notifications/cancelled"
    assert (call.outcome, call.error_code) == ("cancelled", expected)
