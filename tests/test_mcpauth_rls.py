"""The database's own line of tenant isolation (``mcpauth.rls``) and the ORM's (every database).

PostgreSQL: policies and composite keys installed by ``migrate``, the per-statement switch to
the restricted role, failing closed without a tenant, surviving rollbacks, ``mcpauth.W040``, and
the switch's state across requests on 2 workers with a fresh connection per request.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test import Client as Client_
from fastmcp import Client

from mcpauth import checks, rls
from mcpauth.exceptions import CrossTenantAccess
from mcpauth.models import Tenant
from mcpauth.operations import seed_scope_mappings
from mcpauth.tenant_scope import active_tenant, confined
from tests.conftest import FakeIdP, Minter, free_port
from tests.hurried.models import Comment, Project, Task
from tests.servers import server_env, uvicorn_process
from todos.models import Todo

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row-level security is PostgreSQL's"
)


@pytest.fixture
def two(db: None) -> tuple[Tenant, Tenant, Todo, Todo]:
    acme = Tenant.objects.create(external_id="acme")
    globex = Tenant.objects.create(external_id="globex")
    return (
        acme,
        globex,
        Todo.all_tenants.create(tenant=acme, title="a", created_by="alice"),
        Todo.all_tenants.create(tenant=globex, title="g", created_by="bob"),
    )


def sql_titles() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT title FROM todos_todo ORDER BY title")
        return [r[0] for r in cursor.fetchall()]


# --- the ORM line (every database) -------------------------------------------------------------


def test_all_tenants_is_confined_inside_a_body_and_open_outside(two: Any) -> None:
    acme, _, _, g = two
    with confined(acme.pk):
        assert list(Todo.all_tenants.values_list("title", flat=True)) == ["a"]
        assert [t.title for t in Todo.all_tenants.raw("SELECT * FROM todos_todo")] == ["a"]
        with pytest.raises(Todo.DoesNotExist):
            Todo.all_tenants.get(pk=g.pk)
    assert sorted(Todo.all_tenants.values_list("title", flat=True)) == ["a", "g"]
    assert active_tenant() is None


def test_a_body_cannot_query_for_another_principal(two: Any, make_principal: Any) -> None:
    acme, globex, *_ = two
    other = make_principal(tenant=globex.external_id)
    with confined(acme.pk), pytest.raises(CrossTenantAccess):
        Todo.objects.for_principal(other)


def test_clean_refuses_relations_and_moves_across_tenants(two: Any) -> None:
    """The admin and commands go through clean(): it names the field, never a value."""
    acme, globex, a, g = two
    comment = Comment(tenant=acme, todo=g, text="x")
    with pytest.raises(ValidationError) as info:
        comment.full_clean()
    assert "todo" in info.value.message_dict
    Comment.all_tenants.create(tenant=acme, todo=a, text="y")
    a.tenant = globex
    with pytest.raises(ValidationError) as info:
        a.full_clean()
    assert "tenant" in info.value.message_dict


def test_hurried_meta_still_gets_confined_managers() -> None:
    assert Project._meta.base_manager_name == "all_tenants"
    assert Project._base_manager is Project.all_tenants
    assert Task._default_manager is Task.all_tenants


# --- the database line (PostgreSQL) ------------------------------------------------------------


@postgres_only
def test_migrate_installed_policies_and_composite_keys(db: None) -> None:
    assert rls.problems() == []
    names = {name for _, name, _ in rls.expected_constraints()}
    assert len([n for n in names if n.startswith(rls.CONSTRAINT_PREFIX)]) == 2  # task, comment


@postgres_only
def test_hand_written_sql_is_confined_by_the_switch(two: Any) -> None:
    acme, globex, *_ = two
    with confined(acme.pk):
        assert sql_titles() == ["a"]
        with confined(globex.pk):
            assert sql_titles() == ["g"]
        assert sql_titles() == ["a"]
    assert sql_titles() == ["a", "g"]


@postgres_only
def test_a_rolled_back_switch_is_made_again(two: Any) -> None:
    acme, *_ = two
    with confined(acme.pk):
        with pytest.raises(RuntimeError), transaction.atomic():
            assert sql_titles() == ["a"]  # the switch happens inside this savepoint ...
            raise RuntimeError
        assert sql_titles() == ["a"]  # ... and is made again after it rolled back
    with transaction.atomic():
        assert sql_titles() == ["a", "g"]


@postgres_only
@pytest.mark.django_db(transaction=True)
async def test_the_async_orm_is_confined() -> None:
    acme = await Tenant.objects.acreate(external_id="acme")
    globex = await Tenant.objects.acreate(external_id="globex")
    await Todo.all_tenants.acreate(tenant=acme, title="a", created_by="alice")
    await Todo.all_tenants.acreate(tenant=globex, title="g", created_by="bob")
    with confined(acme.pk):
        assert [t.title async for t in Todo.all_tenants.all()] == ["a"]
        assert await sync_to_async(sql_titles)() == ["a"]


@postgres_only
def test_the_restricted_role_without_a_tenant_fails_closed(two: Any) -> None:
    role = rls.get_settings().tenant_db_role
    connection.ensure_connection()
    raw = connection.connection  # the DB-API connection: no execute wrapper to help
    with transaction.atomic():
        sid = connection.savepoint()
        with raw.cursor() as cursor:
            cursor.execute("SELECT set_config('role', %s, true)", [role])
            with pytest.raises(Exception, match=r"mcpauth\.tenant_id|bigint"):
                cursor.execute("SELECT count(*) FROM todos_todo")
        connection.savepoint_rollback(sid)


@postgres_only
def test_the_database_refuses_cross_tenant_references_outside_a_call_too(two: Any) -> None:
    """Foreign-key checks bypass row-level security: the composite key stops them."""
    acme, _, _, g = two
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # as at a real transaction's commit
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        Comment.all_tenants.create(tenant=acme, todo=g, text="sneaky")
    assert rls.cross_tenant_violation(info.value)


@postgres_only
def test_w040_names_a_table_without_its_policy(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP POLICY {rls.POLICY_TENANT} ON hurried_comment")
    try:
        errors = checks.check_row_level_security(databases=["default"])
        assert [e.id for e in errors] == ["mcpauth.W040"]
        assert "hurried_comment" in errors[0].msg
        ready = Client_().get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["tenant_isolation"]["ok"] is False
    finally:
        rls.install()
    assert checks.check_row_level_security(databases=["default"]) == []


# --- state between requests: 2 workers, a fresh connection per request --------------------------

HURRIED = {"hurried:all": ("Hurried", ["hurried.view_comment", "hurried.add_comment"])}


@pytest.mark.needs_shared_services
def test_two_workers_alternating_tenants_never_see_each_other(
    transactional_db: None, mint: Minter, idp: FakeIdP, tmp_path: Any
) -> None:
    """Each worker's connections switch tenant per call; every request is a new connection."""
    from django.apps import apps

    seed_scope_mappings(apps, HURRIED)
    tenants = {name: Tenant.objects.create(external_id=name) for name in ("acme", "globex")}
    for name, tenant in tenants.items():
        todo = Todo.all_tenants.create(tenant=tenant, title=f"{name} todo")
        Comment.all_tenants.create(tenant=tenant, todo=todo, text=f"{name} says")
    tokens = {name: mint(scope="hurried:all", org_id=name, ttl=600) for name in tenants}
    env = server_env(idp.issuer, str(tmp_path), DJANGO_SETTINGS_MODULE="tests.settings")

    async def one(url: str, name: str, tool: str, mode: str) -> Any:
        async with Client(url, auth=tokens[name], mode=mode) as client:  # a new connection
            return (await client.call_tool(tool, {})).data

    async def drive(url: str) -> list[tuple[str, str, Any]]:
        seen = []
        plan = itertools.product(range(6), ("acme", "globex"), ("sql_todo_titles", "all_comments"))
        for i, name, tool in plan:
            mode = "legacy" if i % 2 else "auto"
            seen.append((name, tool, await asyncio.wait_for(one(url, name, tool, mode), 30)))
        return seen

    with uvicorn_process(free_port(), env, workers=2) as base:
        seen = asyncio.run(drive(f"{base}/mcp"))
    assert len(seen) == 24
    for name, tool, result in seen:
        expected = [f"{name} todo"] if tool == "sql_todo_titles" else [f"{name} says"]
        assert result == expected, (name, tool, result)


@postgres_only
def test_a_body_cannot_read_platform_tables(two: Any) -> None:
    """Users, sessions, the audit trail and the configuration are the platform's, not a tool's:
    a body's own SQL gets 'permission denied'; it sees its own tenant row and nothing else."""
    from django.contrib.auth.models import User

    from audit.models import AuditEvent
    from mcpauth.models import ScopeMapping

    acme, *_ = two
    User.objects.create_user("staff", password="x")
    with confined(acme.pk):
        assert list(Tenant.objects.values_list("external_id", flat=True)) == ["acme"]
        for model, column in ((User, "password"), (AuditEvent, "tenant"), (ScopeMapping, "scope")):
            with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
                list(model.objects.values_list(column, flat=True))
        with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT password FROM auth_user")
    assert User.objects.count() == 1 and Tenant.objects.count() == 2


@postgres_only
def test_an_app_role_that_cannot_create_the_role_gets_a_clear_error(db: None) -> None:
    """Production often connects as a role without CREATEROLE: migrate then says what a DBA runs."""
    from django.core.exceptions import ImproperlyConfigured

    connection.ensure_connection()
    # the DB-API cursor: the execute wrapper would switch the role back before each statement
    with connection.connection.cursor() as cursor:
        cursor.execute(
            "DO $$ BEGIN CREATE ROLE mcp_test_weak NOLOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        cursor.execute("SET LOCAL ROLE mcp_test_weak")
        try:
            with pytest.raises(ImproperlyConfigured, match="CREATE ROLE mcp_never_made NOLOGIN"):
                rls._ensure_role(cursor, "mcp_never_made")
            with pytest.raises(ImproperlyConfigured, match="not a member of 'mcpauth_tenant'"):
                rls._ensure_role(cursor, "mcpauth_tenant")
        finally:
            cursor.execute("RESET ROLE")
