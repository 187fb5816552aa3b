"""Tenant isolation on every path, over /mcp, for an app written by a hurried author (issue 16).

``tests/hurried`` has tenant-owned models linked by foreign keys (to each other and to
``todos.Todo``) and tools that use joins, related managers, prefetches, ``all_tenants``,
``get_object_or_404``, ``raw()``, hand-written SQL and instance ``save()``/``delete()`` by primary
key. Two tenants, acme and globex: every cross-tenant attempt is refused or finds nothing, and
its audit row says which. The same tests run on PostgreSQL (row-level security and composite
keys in the database, CI's first pass) and on SQLite (the ORM's checks, CI's second pass);
hand-written SQL is confined only where the database enforces it.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from fastmcp import Client
from fastmcp.exceptions import ToolError

from audit.models import AuditEvent
from mcpauth.models import Tenant
from mcpauth.operations import seed_scope_mappings
from tests.conftest import LiveServer, Minter
from tests.hurried.models import Comment, Project, Task
from todos.models import Todo

pytestmark = pytest.mark.django_db(transaction=True)

HURRIED_SCOPES = {
    "hurried:all": (
        "Hurried app",
        ["hurried.view_comment", "hurried.add_comment", "todos.view_todo"],
    )
}
on_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="hand-written SQL is confined by PostgreSQL only"
)


class World:
    """Two tenants with a todo, a comment, a project and a task each."""

    def __init__(self) -> None:
        self.acme = Tenant.objects.create(external_id="acme")
        self.globex = Tenant.objects.create(external_id="globex")
        self.acme_todo = Todo.all_tenants.create(tenant=self.acme, title="acme todo")
        self.globex_todo = Todo.all_tenants.create(tenant=self.globex, title="globex todo")
        self.acme_comment = Comment.all_tenants.create(
            tenant=self.acme, todo=self.acme_todo, text="acme says"
        )
        self.globex_comment = Comment.all_tenants.create(
            tenant=self.globex, todo=self.globex_todo, text="globex says"
        )
        self.acme_project = Project.all_tenants.create(tenant=self.acme, name="acme p")
        self.globex_project = Project.all_tenants.create(tenant=self.globex, name="globex p")
        Task.all_tenants.create(tenant=self.globex, project=self.globex_project, title="g task")


@pytest.fixture
def world(live: LiveServer) -> World:
    from django.apps import apps

    seed_scope_mappings(apps, HURRIED_SCOPES)
    return World()


@pytest.fixture
def acme(live: LiveServer, mint: Minter) -> Client[Any]:
    return Client(live.url, auth=mint(scope="hurried:all", org_id="acme"))


async def call(client: Client[Any], tool: str, **arguments: Any) -> Any:
    async with client:
        return (await client.call_tool(tool, arguments)).data


async def refused(client: Client[Any], tool: str, **arguments: Any) -> str:
    async with client:
        with pytest.raises(ToolError) as info:
            await client.call_tool(tool, arguments)
    return str(info.value)


async def last_row() -> tuple[str, str, str, str]:
    row = await AuditEvent.objects.filter(method="tools/call").order_by("-id").afirst()
    assert row is not None
    return row.tool, row.outcome, row.tenant, row.error_message


# --- writes that would cross a tenant --------------------------------------------------------


@pytest.mark.parametrize("tool", ["add_comment", "add_comment_by_save"])
async def test_a_relation_to_another_tenants_row_is_refused(
    world: World, acme: Client[Any], tool: str
) -> None:
    message = await refused(acme, tool, todo_id=str(world.globex_todo.pk), text="x")
    assert "todo" in message and str(world.globex_todo.pk) not in message
    assert await Comment.all_tenants.filter(todo=world.globex_todo).acount() == 1
    assert (await last_row())[:3] == (tool, "denied", "acme")


@pytest.mark.parametrize("tool", ["add_comment", "add_comment_by_save"])
async def test_a_relation_to_an_own_row_works_and_is_stamped(
    world: World, acme: Client[Any], tool: str
) -> None:
    made = await call(acme, tool, todo_id=str(world.acme_todo.pk), text="fine")
    comment = await Comment.all_tenants.select_related("tenant").aget(pk=made["id"])
    assert comment.tenant.external_id == "acme"
    assert (await last_row())[:3] == (tool, "ok", "acme")


async def test_a_task_cannot_join_another_tenants_project(world: World, acme: Client[Any]) -> None:
    await refused(acme, "add_task", project_id=world.globex_project.pk, title="sneak")
    assert await Task.all_tenants.acount() == 1
    made = await call(acme, "add_task", project_id=world.acme_project.pk, title="mine")
    assert await Task.all_tenants.filter(pk=made["id"], tenant=world.acme).aexists()


async def test_update_cannot_retarget_a_relation(world: World, acme: Client[Any]) -> None:
    await refused(
        acme,
        "retarget_comment",
        comment_id=world.acme_comment.pk,
        todo_id=str(world.globex_todo.pk),
    )
    comment = await Comment.all_tenants.aget(pk=world.acme_comment.pk)
    assert comment.todo_id == world.acme_todo.pk
    assert (await last_row())[:3] == ("retarget_comment", "denied", "acme")


async def test_a_row_cannot_be_moved_to_another_tenant(world: World, acme: Client[Any]) -> None:
    await refused(acme, "move_comment", comment_id=world.acme_comment.pk, tenant_id=world.globex.pk)
    comment = await Comment.all_tenants.aget(pk=world.acme_comment.pk)
    assert comment.tenant_id == world.acme.pk
    assert (await last_row())[:3] == ("move_comment", "denied", "acme")


async def test_save_by_primary_key_cannot_overwrite_another_tenants_row(
    world: World, acme: Client[Any]
) -> None:
    await refused(acme, "overwrite_todo", todo_id=str(world.globex_todo.pk), title="pwned")
    assert (await Todo.all_tenants.aget(pk=world.globex_todo.pk)).title == "globex todo"
    assert (await Todo.all_tenants.aget(pk=world.acme_todo.pk)).title == "acme todo"
    assert (await last_row())[:3] == ("overwrite_todo", "denied", "acme")


async def test_delete_by_primary_key_cannot_delete_another_tenants_row(
    world: World, acme: Client[Any]
) -> None:
    message = await refused(acme, "delete_todo_by_pk", todo_id=str(world.globex_todo.pk))
    assert message == "Not found."
    assert await Todo.all_tenants.filter(pk=world.globex_todo.pk).aexists()
    assert (await last_row())[:3] == ("delete_todo_by_pk", "tool_error", "acme")


# --- reads that would cross a tenant ---------------------------------------------------------


async def test_joins_and_select_related_stay_in_the_tenant(world: World, acme: Client[Any]) -> None:
    assert await call(acme, "comment_titles") == [{"text": "acme says", "todo__title": "acme todo"}]
    assert await call(acme, "comment_titles_selected") == ["acme todo"]


async def test_lazy_access_to_another_tenants_row_finds_nothing(
    world: World, acme: Client[Any]
) -> None:
    assert await call(acme, "comment_todo_title", comment_id=world.acme_comment.pk) == "acme todo"
    assert await refused(acme, "comment_todo_title", comment_id=world.globex_comment.pk) == (
        "Not found."
    )
    assert (await last_row())[:3] == ("comment_todo_title", "tool_error", "acme")


async def test_get_object_or_404_and_reverse_managers_are_confined(
    world: World, acme: Client[Any]
) -> None:
    assert await call(acme, "todo_comments", todo_id=str(world.acme_todo.pk)) == ["acme says"]
    assert await refused(acme, "todo_comments", todo_id=str(world.globex_todo.pk)) == "Not found."
    assert await refused(acme, "project_tasks", project_id=world.globex_project.pk) == (
        "Not found."
    )


async def test_all_tenants_and_prefetch_see_only_the_callers_rows(
    world: World, acme: Client[Any]
) -> None:
    assert await call(acme, "prefetched_comments") == {"acme todo": ["acme says"]}
    assert await call(acme, "all_comments") == ["acme says"]
    assert await call(acme, "all_todo_titles_async") == ["acme todo"]


async def test_raw_queries_are_confined(world: World, acme: Client[Any]) -> None:
    assert await call(acme, "raw_todo_titles") == ["acme todo"]
    assert await call(acme, "raw_manager_titles") == ["acme todo"]


@on_postgres
async def test_hand_written_sql_is_confined_by_the_database(
    world: World, acme: Client[Any]
) -> None:
    assert await call(acme, "sql_todo_titles") == ["acme todo"]


@on_postgres
async def test_hand_written_inserts_are_refused_by_the_database(
    world: World, acme: Client[Any]
) -> None:
    # a row for another tenant: the row-level security policy refuses it
    await refused(
        acme,
        "sql_insert_comment",
        todo_id=str(world.globex_todo.pk),
        tenant_id=world.globex.pk,
        text="x",
    )
    assert (await last_row())[:3] == ("sql_insert_comment", "denied", "acme")
    # a row of its own tenant pointing at another tenant's todo: the composite key refuses it
    await refused(
        acme,
        "sql_insert_comment",
        todo_id=str(world.globex_todo.pk),
        tenant_id=world.acme.pk,
        text="x",
    )
    assert (await last_row())[:3] == ("sql_insert_comment", "denied", "acme")
    assert await Comment.all_tenants.acount() == 2
    # refused at COMMIT, which went with the call's audit row: one row per call, no "ok" row
    outcomes = [
        r.outcome async for r in AuditEvent.objects.filter(tool="sql_insert_comment").order_by("id")
    ]
    assert outcomes == ["denied", "denied"]


async def test_outside_a_governed_call_every_tenant_is_visible(world: World) -> None:
    """The admin and commands: cross-tenant access is the explicit ``all_tenants``."""
    assert await Todo.all_tenants.acount() == 2
    assert await Comment.all_tenants.acount() == 2

    def raw_titles() -> list[str]:
        return sorted(t.title for t in Todo.all_tenants.raw("SELECT * FROM todos_todo"))

    assert await sync_to_async(raw_titles)() == ["acme todo", "globex todo"]


async def test_each_call_is_audited_once_with_its_tenant(world: World, acme: Client[Any]) -> None:
    await call(acme, "all_comments")
    await refused(acme, "move_comment", comment_id=world.acme_comment.pk, tenant_id=world.globex.pk)
    rows = [
        (r.tool, r.outcome, r.tenant)
        async for r in AuditEvent.objects.filter(method="tools/call").order_by("id")
    ]
    assert rows == [("all_comments", "ok", "acme"), ("move_comment", "denied", "acme")]
