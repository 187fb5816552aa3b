"""The tool zoo, differentially: governed server vs plain FastMCP serving the same functions.

Every zoo tool (``tests/zoo/mcp.py``) is called through the governed server (uvicorn on
loopback, real tokens) and through plain FastMCP (``FastMCP(mask_error_details=True)``, the
same functions registered with ``mcp.tool``, stateless JSON HTTP), on both protocol eras:

* the ``mcp`` SDK's ``ClientSession`` with the 2025-11-25 handshake (governed: with and
  without the single-exchange transport);
* ``fastmcp.Client`` in its default ``auto`` mode, which negotiates 2026-07-28.

The replies must be equal (``content``, ``structuredContent``, ``isError``), each governed call
must leave exactly one audit row with the right outcome, and a sync tool whose result fails to
serialize must leave none of its writes behind.

Guard tools (multi-round-trip input, ``InputRequiredResult``) ask the same questions and give
the same final answers on 2026-07-28 (one row per round, ``input_required`` then linked rounds),
the same error on the handshake era, and a tampered state the same refusal. ``zoo_context``'s
progress and log messages arrive as from plain FastMCP's default HTTP app (stateful, SSE), on
both eras and both of our transports.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
import uvicorn
from asgiref.sync import sync_to_async
from fastmcp import Client, FastMCP
from fastmcp.tools import FunctionTool
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from mcpauth.operations import seed_scope_mappings
from mcpauth.runtime.registry import registry
from tests.conftest import MCP_ACCEPT, LiveServer, Minter, call_tool, free_port
from tests.zoo.models import Exhibit

ZOO_SCOPES = {"zoo:all": ("The tool zoo", ["zoo.view_exhibit", "zoo.add_exhibit"])}
ZOO = sorted(spec.name for spec in registry if spec.module == "tests.zoo.mcp")
#: (tool, arguments, outcome of the governed call); ``{era}`` in a string argument is replaced.
CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("zoo_dict", {"name": "okapi"}, "ok"),
    ("zoo_list", {"count": 3}, "ok"),
    ("zoo_str", {"text": "ab", "times": 3}, "ok"),
    ("zoo_int", {"a": 2, "b": 40}, "ok"),
    ("zoo_none", {}, "ok"),
    ("zoo_dataclass", {"animals": ["lion", "zebra"]}, "ok"),
    ("zoo_pydantic", {"animal": {"name": "rex", "legs": 2, "tags": ["t"]}}, "ok"),
    ("zoo_models", {"animals": [{"name": "a", "legs": 2}, {"name": "b"}], "min_legs": 3}, "ok"),
    ("zoo_scores", {"scores": {"alice": 3, "bob": 4}}, "ok"),
    ("zoo_tool_result", {"label": "x"}, "ok"),
    ("zoo_image", {}, "ok"),
    ("zoo_context", {"steps": 3}, "ok"),
    ("zoo_tool_error", {"reason": "closed"}, "tool_error"),
    ("zoo_explode", {}, "server_error"),
    ("zoo_write", {"label": "kept-{era}"}, "ok"),
    ("zoo_write_then_unserializable", {"label": "rolled-back-{era}"}, "server_error"),
]
DIFFERENTIAL_TOOLS = {name for name, _, _ in CALLS}

CallFn = Callable[[str, dict[str, Any]], Awaitable[Any]]


def seed_zoo_scopes() -> None:
    from django.apps import apps

    seed_scope_mappings(apps, ZOO_SCOPES)


def plain_server() -> FastMCP[Any]:
    """Plain FastMCP serving the zoo's functions, as an app without mcpauth would: tools,
    resources and templates, and prompts, each registered with FastMCP's own API."""
    mcp: FastMCP[Any] = FastMCP("plain zoo", mask_error_details=True)
    for name in ZOO:
        spec = registry[name]
        mcp.add_tool(
            FunctionTool.from_function(
                spec.fn,
                name=spec.name,
                description=spec.description,
                annotations=spec.annotations,  # type: ignore[arg-type]
            )
        )
    for resource in registry.resources:
        if resource.module == "tests.zoo.mcp":
            mcp.resource(
                resource.uri,
                name=resource.name,
                description=resource.description,
                mime_type=resource.mime_type,
            )(resource.fn)
    for prompt in registry.prompts:
        if prompt.module == "tests.zoo.mcp":
            mcp.prompt(prompt.fn, name=prompt.name, description=prompt.description)
    return mcp


class PlainServer:
    """Plain FastMCP under uvicorn in a thread: stateless JSON HTTP, as the governed server is
    configured, or (``default_transport``) FastMCP's default HTTP app, stateful and SSE, the
    reference for notifications and cancellation."""

    def __init__(self, *, default_transport: bool = False) -> None:
        self.port = free_port()
        if default_transport:
            app = plain_server().http_app(path="/mcp")
        else:
            app = plain_server().http_app(path="/mcp", stateless_http=True, json_response=True)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def __enter__(self) -> PlainServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the plain FastMCP server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainServer]:
    with PlainServer() as server:
        yield server


@pytest.fixture
def zoo(live: LiveServer) -> LiveServer:
    seed_zoo_scopes()
    return live


@asynccontextmanager
async def sdk_session(url: str, token: str) -> AsyncIterator[CallFn]:
    """The ``mcp`` SDK client, handshake era (``initialize`` → 2025-11-25)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        assert init.protocol_version == "2025-11-25"
        yield session.call_tool


@asynccontextmanager
async def fastmcp_session(url: str, token: str) -> AsyncIterator[CallFn]:
    """``fastmcp.Client`` in its default ``auto`` mode (negotiates 2026-07-28)."""
    async with Client(url, auth=token) as client:
        assert client.protocol_version == "2026-07-28"
        yield client.call_tool_mcp


CLIENTS = {"mcp-sdk-2025-11-25": sdk_session, "fastmcp-auto-2026-07-28": fastmcp_session}


def comparable(result: Any) -> dict[str, Any]:
    return {
        "content": [
            c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in result.content
        ],
        "structuredContent": result.structured_content,
        "isError": bool(result.is_error),
    }


def tool_rows() -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.filter(method="tools/call").order_by("id").values_list("tool", "outcome")
    )


@pytest.mark.parametrize(
    ("client", "fast"),
    [
        ("mcp-sdk-2025-11-25", True),
        ("mcp-sdk-2025-11-25", False),
        ("fastmcp-auto-2026-07-28", True),
        ("fastmcp-auto-2026-07-28", False),
    ],
    ids=["sdk-single-exchange", "sdk-via-sdk-transport", "auto-single-exchange", "auto-via-sdk"],
)
async def test_every_zoo_tool_answers_as_plain_fastmcp(
    zoo: LiveServer, plain: PlainServer, mint: Minter, settings: Any, client: str, fast: bool
) -> None:
    settings.MCPAUTH_FAST_TRANSPORT = fast
    assert set(ZOO) >= DIFFERENTIAL_TOOLS
    era = f"{client}-{fast}"
    token = mint(scope="zoo:all")
    session = CLIENTS[client]
    async with session(zoo.url, token) as governed, session(plain.url, token) as reference:
        for name, template, outcome in CALLS:
            args = {k: v.format(era=era) if isinstance(v, str) else v for k, v in template.items()}
            before = await sync_to_async(tool_rows)()
            ours = comparable(await governed(name, args))
            theirs = comparable(await reference(name, args))
            assert ours == theirs, name
            assert ours["isError"] is (outcome != "ok"), (name, ours)
            rows = (await sync_to_async(tool_rows)())[len(before) :]
            assert rows == [(name, outcome)], name
    # the failed sync write rolled back with its row; the plain server kept its own
    labels = await sync_to_async(lambda: set(Exhibit.objects.values_list("label", flat=True)))()
    assert f"kept-{era}" in labels
    assert f"rolled-back-{era}" in labels  # written once: by plain FastMCP, not by us
    assert await Exhibit.objects.filter(label=f"rolled-back-{era}").acount() == 1


async def test_tool_listing_matches_plain_fastmcp(
    zoo: LiveServer, plain: PlainServer, mint: Minter
) -> None:
    """Same descriptions, input and output schemas and annotations, on both eras."""
    token = mint(scope="zoo:all")
    for mode in ("auto", "legacy"):
        listings = []
        for url in (zoo.url, plain.url):
            async with Client(url, auth=token, mode=mode) as client:
                tools = await client.list_tools()
            listings.append(
                {
                    t.name: t.model_dump(mode="json", by_alias=True, exclude_none=True)
                    for t in tools
                    if t.name in ZOO
                }
            )
        ours, theirs = listings
        assert sorted(ours) == ZOO
        assert ours == theirs, mode


async def test_invalid_arguments_name_the_field_never_the_value(
    zoo: LiveServer, mint: Minter
) -> None:
    secret = "hunter2-" + uuid.uuid4().hex
    cases = {
        "unexpected": ("zoo_str", {"text": "x", "password": secret}, "password"),
        "wrong type": ("zoo_int", {"a": secret, "b": 1}, "a"),
        "bad uuid-ish nested": ("zoo_pydantic", {"animal": {"name": "x", "legs": secret}}, "legs"),
        "dict key is data": ("zoo_scores", {"scores": {secret: "many"}}, "scores.[key]"),
    }
    async with Client(zoo.url, auth=mint(scope="zoo:all")) as client:
        for name, args, field in cases.values():
            result = await client.call_tool_mcp(name, args)
            text = result.content[0].text
            assert result.is_error and text.startswith("Invalid arguments: "), text
            assert field in text and secret not in text, text
    rows = await sync_to_async(list)(AuditEvent.objects.filter(method="tools/call"))
    assert [r.outcome for r in rows] == ["invalid_request"] * len(cases)
    for row in rows:
        assert row.error_code == "invalid_arguments"
        assert secret not in row.error_message


async def test_async_tool_writes_are_not_transactional(zoo: LiveServer, mint: Minter) -> None:
    """Django 5.2 has no async transactions: the write stays, the row still says server_error."""
    label = "async-" + uuid.uuid4().hex
    async with Client(zoo.url, auth=mint(scope="zoo:all")) as client:
        result = await client.call_tool_mcp("zoo_async_write_then_unserializable", {"label": label})
    assert result.is_error and "Could not serialize" in result.content[0].text
    assert await Exhibit.objects.filter(label=label).aexists()
    row = await AuditEvent.objects.aget(method="tools/call")
    assert (row.outcome, row.error_code) == ("server_error", "serialization_error")


async def test_current_principal_in_an_async_tool(zoo: LiveServer, mint: Minter) -> None:
    token = mint(scope="zoo:all", client_id="keeper", org_id="savanna")
    async with Client(zoo.url, auth=token) as client:
        me = (await client.call_tool("zoo_whoami", {})).data
    assert me == {"client_id": "keeper", "tenant": "savanna", "subject": "user-of-keeper"}


async def test_fastmcp_sees_the_admitted_caller_never_the_bearer(
    zoo: LiveServer, mint: Minter
) -> None:
    """The SDK's auth context holds the admitted caller: FastMCP's ``get_access_token()`` in a
    tool gives its client, subject, scopes, issuer and tenant, and the token's id as ``token``."""
    token = mint(scope="zoo:all", client_id="keeper", org_id="savanna", jti="token-id-1")
    async with Client(zoo.url, auth=token) as client:
        seen = (await client.call_tool("zoo_access_token", {})).data
    assert seen["token"] == "token-id-1" and token not in str(seen)
    assert (seen["client_id"], seen["subject"], seen["scopes"]) == (
        "keeper",
        "user-of-keeper",
        ["zoo:all"],
    )
    assert seen["claims"]["tenant"] == "savanna" and seen["claims"]["iss"].startswith("http")


def test_unexpected_exception_text_never_leaves_the_server(zoo: LiveServer, mint: Minter) -> None:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {mint(scope='zoo:all')}"}
    resp = httpx2.post(zoo.url, json=call_tool("zoo_explode"), headers=headers)
    assert resp.status_code == 200
    assert resp.json()["result"]["isError"] is True
    assert "secret internal detail" not in resp.text
    row = AuditEvent.objects.get()
    assert (row.outcome, row.error_code, row.error_message) == (
        "server_error",
        "RuntimeError",
        "internal error",
    )


# --- multi-round-trip input and notifications ---------------------------------------------------

#: Guard tools (they ask the client for input): (tool, arguments, what the client is asked)
GUARDS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("zoo_confirm", {"item": "okapi"}, ["Feed the okapi?"]),
    ("zoo_survey", {"topic": "bats"}, ["bats: your name?", "bats: and your age?"]),
    ("zoo_adopt", {"label": "adopted-{era}"}, ["Adopt adopted-{era}?"]),
]


@pytest.fixture(scope="module")
def plain_default() -> Iterator[PlainServer]:
    """Plain FastMCP's default HTTP app (stateful, SSE): the reference for notifications."""
    with PlainServer(default_transport=True) as server:
        yield server


@asynccontextmanager
async def guarded(url: str, token: str, mode: str, asked: list[str]) -> AsyncIterator[Client]:
    async def elicit(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append(message)
        return {"value": "yes"}

    async with Client(url, auth=token, mode=mode, elicitation_handler=elicit) as client:
        yield client


async def outcome_of(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    try:
        return comparable(await client.call_tool_mcp(name, args))
    except MCPError as exc:
        return {"error": exc.error.model_dump(mode="json", exclude_none=True)}


@pytest.mark.parametrize("fast", [True, False], ids=["single-exchange", "via-sdk"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_guard_tools_answer_as_plain_fastmcp(
    zoo: LiveServer, plain: PlainServer, mint: Minter, settings: Any, mode: str, fast: bool
) -> None:
    """2026-07-28: the same questions and the same final answers; the handshake era: the same
    error (no multi-round-trip result type there). One row per round."""
    settings.MCPAUTH_FAST_TRANSPORT = fast
    era = f"{mode}-{fast}"
    token = mint(scope="zoo:all")
    for name, template, questions in GUARDS:
        args = {k: v.format(era=era) for k, v in template.items()}
        ours_asked: list[str] = []
        theirs_asked: list[str] = []
        async with guarded(zoo.url, token, mode, ours_asked) as client:
            ours = await outcome_of(client, name, args)
        async with guarded(plain.url, token, mode, theirs_asked) as client:
            theirs = await outcome_of(client, name, args)
        assert ours == theirs, name
        assert ours_asked == theirs_asked
        tool_rows = [
            (r.outcome, r.arguments)
            async for r in AuditEvent.objects.filter(tool=name).order_by("id")
        ]
        if mode == "auto":
            assert ours_asked == [q.format(era=era) for q in questions]
            assert "error" not in ours and not ours["isError"]
            outcomes = [o for o, _ in tool_rows]
            assert outcomes == ["input_required"] * len(questions) + ["ok"], name
            rounds = [a.get("@mcpauth", {}).get("round") for _, a in tool_rows]
            assert rounds == [None, *range(2, len(questions) + 2)], name
        else:
            assert ours["error"]["code"] == -32602 and ours_asked == []
            assert [o for o, _ in tool_rows] == ["tool_error"], name
    # the confirmed adoption was written once by each server (2026-07-28), never on refusal
    adopted = await Exhibit.objects.filter(label=f"adopted-{era}").acount()
    assert adopted == (2 if mode == "auto" else 0)


async def test_a_tampered_state_is_refused_as_plain_fastmcp_refuses_it(
    zoo: LiveServer, plain: PlainServer, mint: Minter
) -> None:
    token = mint(scope="zoo:all")
    answers = []
    for url in (zoo.url, plain.url):
        async with Client(url, auth=token) as client:
            first = await client.session.call_tool(
                "zoo_confirm", {"item": "emu"}, allow_input_required=True
            )
            state = first.request_state
            assert state and "emu" not in state  # sealed, on both
            tampered = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
            try:
                await client.session.call_tool(
                    "zoo_confirm",
                    {"item": "emu"},
                    input_responses={"confirm": {"action": "accept", "content": {"value": "y"}}},
                    request_state=tampered,
                    allow_input_required=True,
                )
            except MCPError as exc:
                answers.append(exc.error.model_dump(mode="json", exclude_none=True))
    ours, theirs = answers
    assert (
        ours
        == theirs
        == {
            "code": -32602,
            "message": "Invalid or expired requestState",
            "data": {"reason": "invalid_request_state"},
        }
    )


@pytest.mark.parametrize("fast", [True, False], ids=["single-exchange", "via-sdk"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_notifications_answer_as_plain_fastmcp(
    zoo: LiveServer, plain_default: PlainServer, mint: Minter, settings: Any, mode: str, fast: bool
) -> None:
    """``zoo_context``'s progress and log messages, as plain FastMCP's default HTTP app sends
    them, on both eras and both of our transports."""
    settings.MCPAUTH_FAST_TRANSPORT = fast
    token = mint(scope="zoo:all")
    heard: list[list[Any]] = []
    results = []
    for url in (zoo.url, plain_default.url):
        events: list[Any] = []
        heard.append(events)

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            heard[-1].append(("progress", progress, total, message))

        async def on_log(message: Any) -> None:
            heard[-1].append(("log", message.level, message.data))

        async with Client(
            url, auth=token, mode=mode, progress_handler=on_progress, log_handler=on_log
        ) as client:
            results.append(comparable(await client.call_tool_mcp("zoo_context", {"steps": 3})))
    ours, theirs = heard
    assert results[0] == results[1]
    assert ours == theirs
    assert [e[1] for e in ours if e[0] == "progress"] == [1, 2, 3]
    assert ("log", "info", {"msg": "starting 3 steps", "extra": None}) in ours
