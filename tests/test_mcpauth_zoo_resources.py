"""The zoo's resources, resource templates and prompts, differentially: governed vs plain FastMCP.

Every zoo resource and prompt (``tests/zoo/mcp.py``) is read or got through the governed server
and through plain FastMCP serving the same functions (``FastMCP.resource`` / ``FastMCP.prompt``),
on both protocol eras (the ``mcp`` SDK's 2025-11-25 handshake, with and without the
single-exchange transport, and ``fastmcp.Client`` auto, 2026-07-28). Results and errors must be
equal, the listings too, and each governed read or get leaves exactly one audit row with its
URI (never the query) or prompt name and the right outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from fastmcp import Client
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from mcpauth.runtime.registry import registry
from tests.conftest import LiveServer, Minter
from tests.test_mcpauth_zoo import PlainServer, seed_zoo_scopes
from tests.zoo.models import Exhibit

ZOO_RESOURCES = sorted(s.uri for s in registry.resources if s.module == "tests.zoo.mcp")
ZOO_PROMPTS = sorted(s.name for s in registry.prompts if s.module == "tests.zoo.mcp")
#: (URI, outcome of the governed read, what its audit row's ``tool`` holds)
READS: list[tuple[str, str, str]] = [
    ("zoo://info", "ok", "zoo://info"),
    ("zoo://stats", "ok", "zoo://stats"),
    ("zoo://logo.png", "ok", "zoo://logo.png"),
    ("zoo://multi", "ok", "zoo://multi"),
    ("zoo://animals/okapi/legs/4", "ok", "zoo://animals/okapi/legs/4"),
    ("zoo://search?q=lion&limit=3", "ok", "zoo://search"),
    ("zoo://search", "ok", "zoo://search"),
    ("zoo://keeper/ana", "ok", "zoo://keeper/ana"),
    ("zoo://closed/aviary", "tool_error", "zoo://closed/aviary"),
    ("zoo://explode", "server_error", "zoo://explode"),
    ("zoo://write/rolled-back-{era}", "server_error", "zoo://write/rolled-back-{era}"),
    ("zoo://nowhere", "invalid_request", "zoo://nowhere"),
]
#: (prompt, arguments as MCP sends them, outcome of the governed get)
GETS: list[tuple[str, dict[str, str], str]] = [
    ("zoo_greeting", {"name": "Ana"}, "ok"),
    ("zoo_conversation", {"topic": "lions", "turns": "2"}, "ok"),
    ("zoo_conversation", {"topic": "bats"}, "ok"),
    ("zoo_prompt_result", {"animal": '{"name": "rex", "legs": 2}'}, "ok"),
    ("zoo_prompt_error", {"reason": "rain"}, "tool_error"),
    ("zoo_no_such_prompt", {}, "invalid_request"),
]


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainServer]:
    with PlainServer() as server:
        yield server


@pytest.fixture
def zoo(live: LiveServer) -> LiveServer:
    seed_zoo_scopes()
    return live


class Session:
    """One client's read and get, either era, returning the result or the error."""

    def __init__(self, read: Any, get: Any) -> None:
        self._read, self._get = read, get

    async def read(self, uri: str) -> dict[str, Any]:
        return await self._answer(self._read(uri))

    async def get(self, name: str, arguments: dict[str, str]) -> dict[str, Any]:
        return await self._answer(self._get(name, arguments))

    @staticmethod
    async def _answer(pending: Any) -> dict[str, Any]:
        try:
            result = await pending
        except MCPError as exc:
            return {"error": exc.error.model_dump(mode="json", exclude_none=True)}
        dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        meta = dumped.get("_meta", {})
        meta.pop(SERVER_INFO, None)  # the servers' names differ, by design
        if not meta:
            dumped.pop("_meta", None)
        return {"result": dumped}


@asynccontextmanager
async def sdk(url: str, token: str) -> AsyncIterator[Session]:
    """The ``mcp`` SDK client, handshake era (2025-11-25)."""
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        assert init.protocol_version == "2025-11-25"
        assert init.capabilities.resources is not None and init.capabilities.prompts is not None
        yield Session(session.read_resource, session.get_prompt)


@asynccontextmanager
async def auto(url: str, token: str) -> AsyncIterator[Session]:
    """``fastmcp.Client`` auto: 2026-07-28."""
    async with Client(url, auth=token) as client:
        assert client.protocol_version == "2026-07-28"
        caps = client.server_capabilities
        assert caps is not None and caps.resources is not None and caps.prompts is not None
        yield Session(client.read_resource_mcp, client.get_prompt_mcp)


CLIENTS = {"sdk": sdk, "auto": auto}
SERVER_INFO = "io.modelcontextprotocol/serverInfo"


def rows(method: str) -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.filter(method=method).order_by("id").values_list("tool", "outcome")
    )


@pytest.mark.parametrize(
    ("client", "fast"),
    [("sdk", True), ("sdk", False), ("auto", True), ("auto", False)],
    ids=["sdk-single-exchange", "sdk-via-sdk-transport", "auto-single-exchange", "auto-via-sdk"],
)
async def test_every_zoo_resource_and_prompt_answers_as_plain_fastmcp(
    zoo: LiveServer, plain: PlainServer, mint: Minter, settings: Any, client: str, fast: bool
) -> None:
    settings.MCPAUTH_FAST_TRANSPORT = fast
    era = f"{client}-{fast}"
    token = mint(scope="zoo:all")
    connect = CLIENTS[client]
    async with connect(zoo.url, token) as governed, connect(plain.url, token) as reference:
        for template, outcome, audited in READS:
            uri = template.format(era=era)
            before = await sync_to_async(rows)("resources/read")
            ours, theirs = await governed.read(uri), await reference.read(uri)
            assert ours == theirs, uri
            assert ("error" in ours) is (outcome != "ok"), (uri, ours)
            after = (await sync_to_async(rows)("resources/read"))[len(before) :]
            assert after == [(audited.format(era=era), outcome)], uri
        for name, arguments, outcome in GETS:
            before = await sync_to_async(rows)("prompts/get")
            ours, theirs = await governed.get(name, arguments), await reference.get(name, arguments)
            assert ours == theirs, name
            assert ("error" in ours) is (outcome != "ok"), (name, ours)
            after = (await sync_to_async(rows)("prompts/get"))[len(before) :]
            assert after == [(name, outcome)], name
    # the failed sync resource rolled back its write with its row; plain FastMCP kept its own
    assert await Exhibit.objects.filter(label=f"rolled-back-{era}").acount() == 1


async def test_the_zoo_covers_what_it_says() -> None:
    read = {t.split("?")[0] for t, _, _ in READS}
    assert {"zoo://info", "zoo://stats", "zoo://logo.png", "zoo://search"} <= read
    assert set(ZOO_PROMPTS) - {n for n, _, _ in GETS} == {"zoo_keepers_only"}
    kinds = {(s.is_template, s.is_async) for s in registry.resources if s.uri in ZOO_RESOURCES}
    assert kinds == {(False, False), (False, True), (True, False), (True, True)}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_listings_match_plain_fastmcp(
    zoo: LiveServer, plain: PlainServer, mint: Minter, mode: str
) -> None:
    """Same resources, templates and prompts, described alike, on both eras."""
    token = mint(scope="zoo:all")
    listings = []
    for url in (zoo.url, plain.url):
        async with Client(url, auth=token, mode=mode) as client:
            listing = {
                "resources": await client.list_resources(),
                "templates": await client.list_resource_templates(),
                "prompts": await client.list_prompts(),
            }
        listings.append(
            {
                kind: sorted(
                    (
                        item.model_dump(mode="json", by_alias=True, exclude_none=True)
                        for item in items
                    ),
                    key=repr,
                )
                for kind, items in listing.items()
            }
        )
    ours, theirs = listings
    # the governed server also serves the other apps' (notes'), the plain one the zoo's only
    for kind, key in (("resources", "uri"), ("templates", "uriTemplate"), ("prompts", "name")):
        ours[kind] = [i for i in ours[kind] if i[key] in {*ZOO_RESOURCES, *ZOO_PROMPTS}]
        names = {i[key] for i in ours[kind]}
        assert names == {i[key] for i in theirs[kind]}, kind
        assert names, kind
    assert ours == theirs
    assert next(r for r in ours["resources"] if r["uri"] == "zoo://logo.png")["name"] == "zoo_logo"
