"""mcpauth as a platform: the public tool API, autodiscovery, checks and tenant confinement."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db.migrations.loader import MigrationLoader
from fastmcp import Client

from audit.models import AuditEvent
from mcpauth import checks, current_principal, tool
from mcpauth.exceptions import NoPrincipal
from mcpauth.identity.tokens import Principal, TenantRef
from mcpauth.models import Tenant
from mcpauth.operations import seed_scope_mappings
from mcpauth.runtime.context import CallContext, bind
from mcpauth.runtime.registry import ToolRegistry, ToolSpec, is_tool_name, registry
from mcpauth.runtime.server import get_server
from tests.conftest import LiveServer, Minter
from tests.notes.models import Note
from todos.models import Todo

ROOT = Path(__file__).resolve().parent.parent
NOTES_SCOPES = {"notes:all": ("Notes", ["notes.add_note", "notes.view_note"])}


def principal(tenant: Tenant, perms: frozenset[str] = frozenset()) -> Principal:
    return Principal(
        client_id="c",
        subject="s",
        tenant=TenantRef(tenant.pk, tenant.external_id),
        scopes=frozenset(),
        permissions=perms,
        token_id="t",
    )


# --- the README's example is a real, working app ----------------------------------------------


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n" + re.escape(marker) + r"\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no python block starting with {marker!r}"
    return match.group(1)


def test_readme_example_is_tests_notes_verbatim_and_short() -> None:
    models = readme_block("# notes/models.py")
    tools = readme_block("# notes/mcp.py")
    more = readme_block("# notes/mcp.py, continued")  # resources and prompts
    assert models == (ROOT / "tests/notes/models.py").read_text()
    assert tools + "\n\n" + more == (ROOT / "tests/notes/mcp.py").read_text()
    assert len((models + tools).splitlines()) + 2 <= 30
    assert len(more.splitlines()) <= 20


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_readme_example_tools_work_and_stay_in_their_tenant(
    live: LiveServer, mint: Minter, mode: str
) -> None:
    from django.apps import apps

    await sync_to_async(seed_scope_mappings)(apps, NOTES_SCOPES)
    acme = mint(scope="notes:all", org_id="acme")
    globex = mint(scope="notes:all", org_id="globex")
    async with Client(live.url, auth=acme, mode=mode) as client:
        assert {"add_note", "search_notes"} <= {t.name for t in await client.list_tools()}
        added = (await client.call_tool("add_note", {"text": "feed the cat"})).data
        assert added["text"] == "feed the cat"
        found = (await client.call_tool("search_notes", {"query": "CAT"})).data
        assert [n["text"] for n in found] == ["feed the cat"]
    async with Client(live.url, auth=globex, mode=mode) as client:
        assert (await client.call_tool("search_notes", {"query": "cat"})).data == []
    stored = await Note.all_tenants.select_related("tenant").aget()
    assert stored.tenant.external_id == "acme"
    outcomes = await sync_to_async(list)(
        AuditEvent.objects.filter(method="tools/call")
        .order_by("id")
        .values_list("tool", "outcome", "tenant")
    )
    assert outcomes == [
        ("add_note", "ok", "acme"),
        ("search_notes", "ok", "acme"),
        ("search_notes", "ok", "globex"),
    ]


# --- the decorator and the registry --------------------------------------------------------------


# server built already
@pytest.mark.filterwarnings("ignore::mcpauth.runtime.registry.LateRegistration")
def test_tool_returns_the_function_unchanged_sync_and_async() -> None:
    local = ToolRegistry()

    def plain(x: int) -> int:
        return x

    async def coro(x: int) -> int:
        return x

    for fn in (plain, coro):
        # the global decorator, then moved to a local registry so the suite's stays clean
        assert tool(permissions=["zoo.view_exhibit"], name=f"tmp_{fn.__name__}")(fn) is fn
        local.register(registry[f"tmp_{fn.__name__}"])
        registry.unregister(f"tmp_{fn.__name__}")
    assert local[f"tmp_{coro.__name__}"].is_async and not local["tmp_plain"].is_async
    assert tool(plain) is plain and registry["plain"].permissions == ()
    registry.unregister("plain")


def test_annotations_follow_what_is_declared() -> None:
    tools = {t.name: t for t in registry}
    assert tools["create_todo"].annotations == {"readOnlyHint": False, "destructiveHint": False}
    assert tools["list_todos"].annotations == {"readOnlyHint": True}
    assert tools["delete_todo"].annotations == {
        "readOnlyHint": False,
        "destructiveHint": True,
        "idempotentHint": True,
    }


async def test_served_annotations_match_the_registry() -> None:
    assert await get_server().list_tools() == []  # no caller, no tools (fails closed)
    served = {t.name: t for t in await get_server().list_tools(run_middleware=False)}
    for spec in registry:
        hints = served[spec.name].annotations
        assert hints is not None
        assert hints.model_dump(by_alias=True, exclude_none=True) == spec.annotations


def test_wrong_permission_types_fail_at_decoration() -> None:
    with pytest.raises(TypeError):
        tool(permissions="todos.view_todo")  # a string, not a list
    with pytest.raises(TypeError):
        tool(permissions=[1])


def test_duplicate_names_and_bad_permissions_are_check_errors() -> None:
    local = ToolRegistry()

    def first() -> None: ...
    def second() -> None: ...

    local.register(ToolSpec(name="same", fn=first, permissions=("a.b",), module="one.mcp"))
    local.register(ToolSpec(name="same", fn=second, permissions=("a.b",), module="two.mcp"))
    local.register(ToolSpec(name="bad", fn=first, permissions=("nodot",), module="one.mcp"))
    local.register(
        ToolSpec(name="both", fn=second, permissions=(), read_only=True, destructive=True)
    )
    local.register(ToolSpec(name="x" * 101, fn=first, permissions=(), module="one.mcp"))
    local.register(ToolSpec(name="y" * 100, fn=first, permissions=(), module="one.mcp"))  # fits
    messages = checks.tool_messages(local)
    assert sorted(m.id for m in messages) == [
        "mcpauth.E006",
        "mcpauth.E007",
        "mcpauth.E008",
        "mcpauth.E009",
    ]
    assert all(m.is_serious() and m.hint for m in messages)
    e006 = next(m for m in messages if m.id == "mcpauth.E006")
    assert "one.mcp.first" in e006.msg and "two.mcp.second" in e006.msg
    assert local["same"].fn is first  # the first registration is kept, never replaced


@pytest.mark.parametrize(
    "name",
    ["", "has space", "caf\u00e9", "rtl\u202eevil", "tab\tname", "a/b", "semi;colon", "x" * 101],
)
def test_a_tool_name_outside_the_mcp_alphabet_is_a_check_error(name: str) -> None:
    """One definition (``registry.is_tool_name``) for the registry and for ``/mcp`` requests."""
    local = ToolRegistry()
    local.register(ToolSpec(name=name, fn=print, permissions=(), module="one.mcp"))
    local.register(ToolSpec(name="ok_Name-2.v1", fn=repr, permissions=(), module="one.mcp"))
    messages = checks.tool_messages(local)
    assert [m.id for m in messages] == ["mcpauth.E009"]
    assert "\u202e" not in messages[0].msg and "\t" not in messages[0].msg  # shown escaped
    assert is_tool_name("ok_Name-2.v1") and not is_tool_name(name)


def test_startup_refuses_duplicate_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    local = ToolRegistry()
    local.register(ToolSpec(name="same", fn=print, permissions=()))
    local.register(ToolSpec(name="same", fn=repr, permissions=()))
    monkeypatch.setattr(checks, "registry", local)
    with pytest.raises(ImproperlyConfigured, match=r"mcpauth\.E006"):
        checks.assert_startup_ready()


def test_an_installed_app_with_a_clashing_tool_stops_manage_py_check() -> None:
    """End to end: autodiscovery finds tests/dupes/mcp.py, and the check refuses it."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_dupes", "DEBUG": "1"}
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "mcpauth.E006" in proc.stderr and "'get_todo'" in proc.stderr
    assert "todos.mcp.get_todo" in proc.stderr and "tests.dupes.mcp.get_todo" in proc.stderr
    assert "mcpauth.E007" in proc.stderr and "'not a permission'" in proc.stderr


def test_apps_tools_are_autodiscovered() -> None:
    modules = {spec.module for spec in registry}
    assert {"todos.mcp", "tests.zoo.mcp", "tests.notes.mcp"} <= modules
    assert "tests.dupes.mcp" not in modules  # not installed in these settings


# --- the core knows no domain app ----------------------------------------------------------------


def test_core_imports_no_domain_app() -> None:
    offenders = []
    for package in ("mcpauth", "audit", "config"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if re.search(r"^\s*(from|import)\s+(todos|tests)\b", text, re.MULTILINE):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_core_migrations_do_not_depend_on_todos() -> None:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    for (app, name), migration in loader.disk_migrations.items():
        if app in {"mcpauth", "audit"}:
            assert all(dep[0] != "todos" for dep in migration.dependencies), (app, name)


def test_todos_has_no_sql_strings() -> None:
    sql = re.compile(r"(SELECT .* FROM|INSERT INTO|DELETE FROM|UPDATE [a-z_\"]+ SET)", re.I)
    for path in (ROOT / "todos").rglob("*.py"):
        assert not sql.search(path.read_text()), path


# --- tenant confinement fails closed --------------------------------------------------------------


@pytest.mark.django_db
def test_confined_manager_refuses_to_run_without_a_principal() -> None:
    acme = Tenant.objects.create(external_id="acme")
    for attempt in (
        lambda: Todo.objects.all(),
        lambda: Todo.objects.filter(title="x"),
        lambda: Todo.objects.count(),
        lambda: Todo.objects.get(pk=1),
        lambda: Todo.objects.create(title="x", tenant=acme),
        lambda: Todo.objects.for_principal(None),  # type: ignore[arg-type]
        lambda: Todo.objects.current(),  # no governed call in progress
    ):
        with pytest.raises(NoPrincipal):
            attempt()


@pytest.mark.django_db
def test_confined_queryset_reads_and_writes_only_its_tenant() -> None:
    acme, globex = (Tenant.objects.create(external_id=n) for n in ("acme", "globex"))
    p = principal(acme)
    mine = Todo.objects.for_principal(p).create(title="mine", created_by="s")
    Todo.all_tenants.create(title="theirs", created_by="s", tenant=globex)
    assert mine.tenant_id == acme.pk
    assert list(Todo.objects.for_principal(p).values_list("title", flat=True)) == ["mine"]
    assert Todo.objects.for_principal(p).filter(title="theirs").count() == 0
    assert Todo.objects.for_principal(p).filter(title__startswith="m").get() == mine
    with pytest.raises(NoPrincipal):
        Todo.objects.for_principal(p).create(title="x", created_by="s", tenant=globex)
    made = Todo.objects.for_principal(p).bulk_create([Todo(title="b1", created_by="s")])
    assert made[0].tenant_id == acme.pk
    assert Todo.objects.for_principal(p).get_or_create(title="g", created_by="s")[0].tenant == acme
    assert Todo.objects.for_principal(principal(globex)).filter(title="mine").count() == 0
    # cross-tenant code says so explicitly
    assert Todo.all_tenants.count() == 4
    assert Todo._default_manager.name == "all_tenants"


@pytest.mark.django_db
def test_confined_queryset_cannot_move_a_row_to_another_tenant() -> None:
    from django.db.models import F

    acme, globex = (Tenant.objects.create(external_id=n) for n in ("acme", "globex"))
    p = principal(acme)
    mine = Todo.objects.for_principal(p).create(title="mine", created_by="s")
    rows = Todo.objects.for_principal(p).filter(pk=mine.pk)
    for attempt in (
        lambda: rows.update(tenant=globex),
        lambda: rows.update(tenant_id=globex.pk),
        lambda: rows.update(tenant_id=F("tenant_id") + 1),
        lambda: rows.update_or_create(pk=mine.pk, defaults={"tenant": globex}),
        lambda: rows.update_or_create(title="new", create_defaults={"tenant_id": globex.pk}),
        lambda: Todo.objects.prepare_update(lambda qs, q: qs, ["tenant_id"]),
    ):
        with pytest.raises((NoPrincipal, ValueError)):
            attempt()
    assert Todo.all_tenants.get().tenant == acme  # nothing moved
    # the tenant's own id is allowed (a no-op), and ordinary updates work
    assert rows.update(tenant=acme, title="renamed") == 1
    assert rows.update_or_create(pk=mine.pk, defaults={"done": True})[0].done is True
    assert Todo.all_tenants.filter(tenant=globex).count() == 0


@pytest.mark.django_db(transaction=True)
async def test_confined_queryset_async_updates_are_guarded_too() -> None:
    acme = await Tenant.objects.acreate(external_id="acme")
    globex = await Tenant.objects.acreate(external_id="globex")
    rows = Todo.objects.for_principal(principal(acme))
    mine = await rows.acreate(title="mine", created_by="s")
    with pytest.raises(NoPrincipal):
        await rows.filter(pk=mine.pk).aupdate(tenant=globex)
    with pytest.raises(NoPrincipal):
        await rows.aupdate_or_create(pk=mine.pk, defaults={"tenant": globex})
    assert (await Todo.all_tenants.aget()).tenant_id == acme.pk


@pytest.mark.django_db
def test_current_uses_the_bound_call() -> None:
    acme = Tenant.objects.create(external_id="acme")
    call = CallContext(request_id="r", client_ip="127.0.0.1", user_agent="")
    with bind(call):
        with pytest.raises(NoPrincipal):
            current_principal()  # a call that is not (yet) authenticated
        call.principal = principal(acme)
        assert current_principal() is call.principal
        Todo.objects.current().create(title="bound", created_by="s")
    assert Todo.all_tenants.get().tenant == acme
    with pytest.raises(NoPrincipal):
        current_principal()


def test_public_api_is_importable_from_the_package() -> None:
    import mcpauth

    assert mcpauth.__all__ == ["current_principal", "downstream", "prompt", "resource", "tool"]
    for name in ("current_principal", "prompt", "resource", "tool"):
        assert inspect.isfunction(getattr(mcpauth, name)), name
    assert inspect.isfunction(mcpauth.downstream.client)
    assert inspect.isfunction(mcpauth.downstream.async_client)
