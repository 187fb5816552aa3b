"""The todo tools over real HTTP: uvicorn on loopback, fastmcp.Client and the mcp SDK."""

from __future__ import annotations

import json

import httpx2
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from tests.conftest import reply_of
from todos.models import Todo

TOOLS = {"create_todo", "list_todos", "get_todo", "update_todo", "delete_todo"}


async def test_fastmcp_client_crud_cycle(live, mint):
    token = mint()
    async with Client(live.url, auth=token) as client:
        assert {t.name for t in await client.list_tools()} == TOOLS
        created = (await client.call_tool("create_todo", {"title": "Write tests"})).data
        todo_id = created["todo"]["id"]
        assert created["todo"]["completed"] is False
        got = (await client.call_tool("get_todo", {"todo_id": todo_id})).data
        assert got["todo"]["title"] == "Write tests"
        upd = await client.call_tool("update_todo", {"todo_id": todo_id, "completed": True})
        assert upd.data["todo"]["completed"] is True
        listed = (await client.call_tool("list_todos", {"completed": True})).data
        assert [t["id"] for t in listed["todos"]] == [todo_id]
        assert listed["next_cursor"] is None
        deleted = (await client.call_tool("delete_todo", {"todo_id": todo_id})).data
        assert deleted == {"deleted": todo_id}
    assert not await Todo.all_tenants.aexists()


async def test_fastmcp_client_sees_tool_errors(live, mint):
    async with Client(live.url, auth=mint()) as client:
        with pytest.raises(ToolError, match="not found"):
            await client.call_tool("get_todo", {"todo_id": "00000000-0000-0000-0000-000000000000"})
        with pytest.raises(ToolError, match="not found"):
            await client.call_tool("get_todo", {"todo_id": "definitely-not-an-id"})
        with pytest.raises(ToolError, match="Title is too long"):
            await client.call_tool("create_todo", {"title": "x" * 201})
        with pytest.raises(ToolError, match="empty"):
            await client.call_tool("create_todo", {"title": ""})
    assert not await Todo.all_tenants.aexists()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "via-fastmcp"])
async def test_mcp_sdk_client_crud_cycle(live, mint, settings, direct):
    settings.MCPAUTH_FAST_TRANSPORT = direct
    headers = {"Authorization": f"Bearer {mint()}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(live.url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} == TOOLS
        created = await session.call_tool("create_todo", {"title": "from the SDK"})
        assert not created.is_error
        todo_id = created.structured_content["todo"]["id"]
        got = await session.call_tool("get_todo", {"todo_id": todo_id})
        assert got.structured_content["todo"]["title"] == "from the SDK"
        upd = await session.call_tool("update_todo", {"todo_id": todo_id, "title": "renamed"})
        assert upd.structured_content["todo"]["title"] == "renamed"
        listed = await session.call_tool("list_todos", {})
        assert [t["id"] for t in listed.structured_content["todos"]] == [todo_id]
        missing = await session.call_tool("get_todo", {"todo_id": "nope"})
        assert missing.is_error and "not found" in missing.content[0].text
        deleted = await session.call_tool("delete_todo", {"todo_id": todo_id})
        assert deleted.structured_content == {"deleted": todo_id}


async def test_data_persists_across_a_restart(live, mint):
    token = mint()
    async with Client(live.url, auth=token) as client:
        created = (await client.call_tool("create_todo", {"title": "survive restart"})).data
    live.restart()
    async with Client(live.url, auth=token) as client:
        got = (await client.call_tool("get_todo", {"todo_id": created["todo"]["id"]})).data
    assert got["todo"]["title"] == "survive restart"


def test_pagination_over_http(live, mint):
    headers = {
        **{"accept": "application/json, text/event-stream"},
        "authorization": f"Bearer {mint()}",
    }
    with httpx2.Client(base_url=live.base, headers=headers) as http:
        for i in range(5):
            http.post(
                "/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "create_todo", "arguments": {"title": f"t{i}"}},
                },
            )
        seen, cursor = [], None
        while True:
            args = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            resp = http.post(
                "/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": 99,
                    "method": "tools/call",
                    "params": {"name": "list_todos", "arguments": args},
                },
            )
            page = json.loads(resp.text)["result"]["structuredContent"]
            seen += [t["title"] for t in page["todos"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert seen == ["t4", "t3", "t2", "t1", "t0"]
    assert AuditEvent.objects.filter(tool="list_todos", outcome="ok").count() == 3


@pytest.mark.parametrize(
    "arguments",
    [
        {"title": "same"},
        {"title": 5},
        {"title": "x", "unexpected": 1},
        {},
        {"title": "x" * 201},
    ],
)
def test_direct_and_fastmcp_paths_answer_alike(live, mint, settings, arguments):
    """The fast path must be indistinguishable from FastMCP for plain tools/call requests."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "authorization": f"Bearer {mint()}",
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "create_todo", "arguments": arguments},
    }
    answers = []
    for direct in (True, False):
        settings.MCPAUTH_FAST_TRANSPORT = direct
        resp = httpx2.post(live.url, json=body, headers=headers)
        assert resp.status_code == 200
        answers.append(reply_of(resp))  # the SDK's path streams it (SSE accepted)
    fast, slow = answers
    assert fast["id"] == slow["id"] == 7
    assert fast["result"]["isError"] == slow["result"]["isError"]
    if not fast["result"]["isError"]:
        for answer in answers:
            todo = answer["result"]["structuredContent"]["todo"]
            assert json.loads(answer["result"]["content"][0]["text"])["todo"] == todo
        assert set(fast["result"]) == set(slow["result"])
    assert [r.outcome for r in AuditEvent.objects.order_by("id")] == [
        "ok"
        if not fast["result"]["isError"]
        else (
            "tool_error" if "Title" in fast["result"]["content"][0]["text"] else "invalid_request"
        )
    ] * 2
