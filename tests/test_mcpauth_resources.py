"""Governed resources and prompts over real HTTP: permissions, step-up, tenants and the audit row.

The live server serves the zoo's and the notes app's resources and prompts (``tests/zoo/mcp.py``,
``tests/notes/mcp.py``, the README's example). Clients: ``fastmcp.Client`` (auto, 2026-07-28, and
``mode="legacy"``, the handshake), the ``mcp`` SDK's ``ClientSession`` and raw JSON-RPC posts
where the HTTP status and headers matter.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.apps import apps
from fastmcp import Client
from fastmcp.prompts import Prompt
from fastmcp.resources import Resource
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from mcpauth.operations import seed_scope_mappings
from mcpauth.runtime.server import get_server
from tests.conftest import MCP_ACCEPT, LiveServer, Minter, rpc
from tests.zoo.models import Exhibit

SCOPES = {
    "zoo:all": ("The tool zoo", ["zoo.view_exhibit", "zoo.add_exhibit"]),
    "zoo:read": ("Read the zoo", ["zoo.view_exhibit"]),
    "notes:all": ("Notes", ["notes.add_note", "notes.view_note"]),
}
#: what needs zoo.add_exhibit (hidden from zoo:read)
WRITE_TEMPLATE = "zoo://write/{label}"
WRITE_PROMPT = "zoo_keepers_only"


@pytest.fixture
def server(live: LiveServer) -> LiveServer:
    seed_scope_mappings(apps, SCOPES)
    return live


def post(server: LiveServer, token: str, method: str, params: dict[str, Any]) -> httpx2.Response:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    return httpx2.post(server.url, json=rpc(method, params), headers=headers, timeout=10)


def row_of(resp: httpx2.Response) -> AuditEvent:
    (row,) = AuditEvent.objects.filter(request_id=resp.headers["x-request-id"])
    return row


async def listing(server: LiveServer, token: str, mode: str) -> dict[str, set[str]]:
    async with Client(server.url, auth=token, mode=mode) as client:
        return {
            "resources": {str(r.uri) for r in await client.list_resources()},
            "templates": {t.uri_template for t in await client.list_resource_templates()},
            "prompts": {p.name for p in await client.list_prompts()},
        }


# --- lists and permissions ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_lists_show_only_what_the_caller_may_use(
    server: LiveServer, mint: Minter, mode: str
) -> None:
    everything = await listing(server, mint(scope="zoo:all notes:all"), mode)
    reader = await listing(server, mint(scope="zoo:read"), mode)
    nobody = await listing(server, mint(scope="profile"), mode)
    assert {"zoo://info", "zoo://stats", "notes://recent"} <= everything["resources"]
    assert {WRITE_TEMPLATE, "notes://{note_id}"} <= everything["templates"]
    assert {WRITE_PROMPT, "zoo_greeting", "summarize_notes"} <= everything["prompts"]
    # zoo:read: the zoo's readable ones, not the write ones, nothing of notes
    assert reader["resources"] == {r for r in everything["resources"] if r.startswith("zoo://")}
    assert reader["templates"] == {
        t for t in everything["templates"] if t.startswith("zoo://") and t != WRITE_TEMPLATE
    }
    assert reader["prompts"] == {
        p for p in everything["prompts"] if p.startswith("zoo_") and p != WRITE_PROMPT
    }
    assert nobody == {"resources": set(), "templates": set(), "prompts": set()}


async def test_lists_over_the_sdk_handshake(server: LiveServer, mint: Minter) -> None:
    headers = {"Authorization": f"Bearer {mint(scope='zoo:read')}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(server.url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        assert init.capabilities.resources is not None and init.capabilities.prompts is not None
        templates = {
            t.uri_template for t in (await session.list_resource_templates()).resource_templates
        }
        prompts = {p.name for p in (await session.list_prompts()).prompts}
        assert "zoo://animals/{name}/legs/{count}" in templates and WRITE_TEMPLATE not in templates
        assert "zoo_greeting" in prompts and WRITE_PROMPT not in prompts
        with pytest.raises(MCPError):  # 403: the SDK's transport surfaces it as an error
            await session.get_prompt(WRITE_PROMPT, {})


@pytest.mark.parametrize(
    ("method", "params", "audited", "scope"),
    [
        ("resources/read", {"uri": "zoo://write/x?token=s3cret"}, "zoo://write/x", "zoo:all"),
        ("prompts/get", {"name": WRITE_PROMPT, "arguments": {}}, WRITE_PROMPT, "zoo:all"),
        ("resources/read", {"uri": "notes://recent"}, "notes://recent", "notes:all"),
    ],
)
def test_read_or_get_without_the_permission_is_403_step_up(
    server: LiveServer, mint: Minter, method: str, params: dict[str, Any], audited: str, scope: str
) -> None:
    resp = post(server, mint(scope="zoo:read"), method, params)
    assert resp.status_code == 403
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope"')
    assert f'scope="{scope}"' in challenge
    body = resp.json()
    assert body["error"]["code"] == -32003
    assert body["error"]["data"]["required_scopes"] == [scope]
    row = row_of(resp)
    assert (row.method, row.tool, row.outcome, row.status) == (method, audited, "denied", 403)
    assert row.error_code == "insufficient_scope"
    assert "s3cret" not in json.dumps([row.tool, row.error_message, row.arguments])
    assert not Exhibit.objects.filter(label="x").exists()  # the body never ran


def test_unknown_resource_and_prompt_are_fastmcp_not_found(
    server: LiveServer, mint: Minter
) -> None:
    token = mint(scope="zoo:read")
    missing = post(server, token, "resources/read", {"uri": "zoo://no/such/thing"})
    assert missing.status_code == 200 and missing.json()["error"]["code"] == -32602
    assert "Resource not found" in missing.json()["error"]["message"]
    gone = post(server, token, "prompts/get", {"name": "no_such_prompt"})
    assert gone.status_code == 200 and gone.json()["error"]["code"] == -32602
    for resp, tool, code in (
        (missing, "zoo://no/such/thing", "unknown_resource"),
        (gone, "no_such_prompt", "unknown_prompt"),
    ):
        row = row_of(resp)
        assert (row.tool, row.outcome, row.error_code) == (tool, "invalid_request", code)


# --- the body runs as the caller, in its tenant -------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_resources_are_confined_to_the_callers_tenant(
    server: LiveServer, mint: Minter, mode: str
) -> None:
    acme, globex = mint(scope="notes:all", org_id="acme"), mint(scope="notes:all", org_id="globex")
    async with Client(server.url, auth=acme, mode=mode) as client:
        mine = (await client.call_tool("add_note", {"text": "acme plans"})).data
    async with Client(server.url, auth=globex, mode=mode) as client:
        await client.call_tool("add_note", {"text": "globex plans"})
        recent = json.loads((await client.read_resource("notes://recent"))[0].text)
        assert [n["text"] for n in recent] == ["globex plans"]
        # acme's note by its id: not there for globex
        assert json.loads((await client.read_resource(f"notes://{mine['id']}"))[0].text) == []
        summary = await client.get_prompt("summarize_notes", {"topic": "plans"})
        assert "plans" in summary.messages[0].content.text
    async with Client(server.url, auth=acme, mode=mode) as client:
        found = json.loads((await client.read_resource(f"notes://{mine['id']}"))[0].text)
        assert found == [{"id": mine["id"], "text": "acme plans"}]
    reads = await sync_to_async(list)(
        AuditEvent.objects.filter(method__in=["resources/read", "prompts/get"])
        .order_by("id")
        .values_list("method", "tool", "tenant", "outcome")
    )
    assert reads == [
        ("resources/read", "notes://recent", "globex", "ok"),
        ("resources/read", f"notes://{mine['id']}", "globex", "ok"),
        ("prompts/get", "summarize_notes", "globex", "ok"),
        ("resources/read", f"notes://{mine['id']}", "acme", "ok"),
    ]


async def test_current_principal_inside_a_sync_resource(server: LiveServer, mint: Minter) -> None:
    token = mint(scope="zoo:read", client_id="keeper", org_id="savanna")
    async with Client(server.url, auth=token) as client:
        me = json.loads((await client.read_resource("zoo://whoami"))[0].text)
    assert me == {"client_id": "keeper", "tenant": "savanna"}


# --- the audit row ------------------------------------------------------------------------------


def test_one_row_per_read_and_get_even_when_other_methods_are_not_recorded(
    server: LiveServer, mint: Minter, settings: Any
) -> None:
    settings.AUDIT_RECORD_ALL_METHODS = False
    token = mint(scope="zoo:read")
    listed = post(server, token, "resources/list", {})
    read = post(server, token, "resources/read", {"uri": "zoo://info"})
    got = post(server, token, "prompts/get", {"name": "zoo_greeting", "arguments": {"name": "Bo"}})
    assert listed.status_code == read.status_code == got.status_code == 200
    assert not AuditEvent.objects.filter(method="resources/list").exists()
    assert (row_of(read).tool, row_of(read).outcome) == ("zoo://info", "ok")
    assert (row_of(got).tool, row_of(got).arguments) == ("zoo_greeting", {"name": "Bo"})
    assert AuditEvent.objects.count() == 2


def test_the_row_keeps_no_query_fragment_user_info_or_secret_of_the_uri(
    server: LiveServer, mint: Minter
) -> None:
    secret = "sk-" + "a1b2c3d4" * 4
    resp = post(
        server,
        mint(scope="zoo:read"),
        "resources/read",
        {"uri": f"zoo://search?q={secret}&limit=1#frag"},
    )
    assert resp.json()["result"]["contents"][0]["text"] == json.dumps([f"{secret}-0"])
    row = row_of(resp)
    assert (row.tool, row.outcome, row.arguments) == ("zoo://search", "ok", {})
    long_uri = "zoo://animals/" + "x" * 200 + "/legs/2"
    row = row_of(post(server, mint(scope="zoo:read"), "resources/read", {"uri": long_uri}))
    assert row.outcome == "ok" and len(row.tool) == 100 and row.tool.endswith("\u2026")
    stored = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert secret not in stored and "frag" not in stored


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("resources/read", {"uri": "zoo://animals/okapi/legs/hunter2"}, None),
        (
            "prompts/get",
            {"name": "zoo_conversation", "arguments": {"topic": "t", "turns": "hunter2"}},
            "turns",
        ),
        (
            "prompts/get",
            {
                "name": "zoo_prompt_result",
                "arguments": {"animal": '{"name": "x", "legs": "hunter2"}'},
            },
            "legs",
        ),
    ],
)
def test_invalid_arguments_name_the_field_never_the_value(
    server: LiveServer, mint: Minter, method: str, params: dict[str, Any], field: str | None
) -> None:
    resp = post(server, mint(scope="zoo:read"), method, params)
    error = resp.json()["error"]
    assert error["code"] == -32602 and error["message"].startswith("Invalid arguments")
    assert "hunter2" not in resp.text
    if field:
        assert field in error["message"]
    row = row_of(resp)
    assert (row.outcome, row.error_code) == ("invalid_request", "invalid_arguments")
    assert "hunter2" not in row.error_message


def test_a_body_error_is_tool_error_and_an_unexpected_one_is_masked(
    server: LiveServer, mint: Minter
) -> None:
    token = mint(scope="zoo:read")
    closed = post(server, token, "resources/read", {"uri": "zoo://closed/aviary"})
    assert closed.json()["error"]["message"] == "the aviary is closed"
    row = row_of(closed)
    assert (row.outcome, row.error_code, row.error_message) == (
        "tool_error",
        "ResourceError",
        "the aviary is closed",
    )
    boom = post(server, token, "resources/read", {"uri": "zoo://explode"})
    assert "secret internal detail" not in boom.text
    row = row_of(boom)
    assert (row.outcome, row.error_message) == ("server_error", "internal error")


# --- nothing ungoverned is served ---------------------------------------------------------------


async def test_a_component_slipped_past_the_seal_is_neither_listed_nor_served(
    server: LiveServer, mint: Minter
) -> None:
    """Adding to the built server raises ServerSealed; even through FastMCP's provider directly
    (no public path), governance lists and serves only what the registry governs."""
    fastmcp_server = get_server()
    provider = fastmcp_server.local_provider
    provider.add_resource(Resource.from_function(lambda: "leak", uri="leak://all", name="leak"))
    provider.add_prompt(Prompt.from_function(lambda: "leak", name="leak_prompt"))
    try:
        token = mint(scope="zoo:all notes:all")
        async with Client(server.url, auth=token) as client:
            assert "leak://all" not in {str(r.uri) for r in await client.list_resources()}
            assert "leak_prompt" not in {p.name for p in await client.list_prompts()}
            with pytest.raises(MCPError, match="not found"):
                await client.read_resource("leak://all")
            with pytest.raises(MCPError, match="Unknown prompt"):
                await client.get_prompt("leak_prompt")
    finally:
        provider.remove_resource("leak://all")
        provider.remove_prompt("leak_prompt")
    outcomes = await sync_to_async(list)(
        AuditEvent.objects.filter(method__in=["resources/read", "prompts/get"]).values_list(
            "tool", "outcome", "error_code"
        )
    )
    assert sorted(outcomes) == [
        ("leak://all", "invalid_request", "unknown_resource"),
        ("leak_prompt", "invalid_request", "unknown_prompt"),
    ]
