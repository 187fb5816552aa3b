"""The ``scopes`` and ``clients`` management commands."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from mcpauth.admission import ratelimit
from mcpauth.conf import get_settings
from mcpauth.exceptions import AccessDenied
from mcpauth.identity import tenancy
from mcpauth.identity.scopes import permissions_for
from mcpauth.identity.tokens import Principal, TenantRef, VerifiedToken
from mcpauth.models import ClientBinding, ClientPolicy, ScopeMapping, Tenant

pytestmark = pytest.mark.django_db

READ = frozenset({"todos.view_todo"})
WRITE = frozenset({"todos.view_todo", "todos.add_todo", "todos.change_todo", "todos.delete_todo"})
SEEDED = {
    "todo:read": ("Read todos", READ),
    "todo:write": ("Create, update and delete todos", WRITE),
}


class TTY(io.StringIO):
    """A terminal the operator answers on."""

    def isatty(self) -> bool:
        return True


def run(*args: Any, **kwargs: Any) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **kwargs)
    return out.getvalue()


def state() -> dict[str, tuple[str, frozenset[str]]]:
    return {
        m.scope: (
            m.description,
            frozenset(f"{p.content_type.app_label}.{p.codename}" for p in m.permissions.all()),
        )
        for m in ScopeMapping.objects.prefetch_related("permissions__content_type")
    }


def write_json(tmp_path: Path, data: Any, name: str = "scopes.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


# --- scopes list / help --------------------------------------------------------------------


def test_seeded_state() -> None:
    assert state() == SEEDED


def test_list_table() -> None:
    out = run("scopes", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["SCOPE", "PERMISSIONS", "DESCRIPTION"]
    assert lines[1].startswith("todo:read ")
    assert "todos.view_todo" in lines[1]
    assert "todos.add_todo, todos.change_todo, todos.delete_todo, todos.view_todo" in lines[2]


def test_list_json() -> None:
    data = json.loads(run("scopes", "list", "--json"))
    assert data == [
        {"scope": "todo:read", "description": "Read todos", "permissions": ["todos.view_todo"]},
        {
            "scope": "todo:write",
            "description": "Create, update and delete todos",
            "permissions": sorted(WRITE),
        },
    ]


def test_list_empty() -> None:
    ScopeMapping.objects.all().delete()
    assert "No scope mappings" in run("scopes", "list")
    assert json.loads(run("scopes", "list", "--json")) == []


@pytest.mark.parametrize(
    "argv",
    [
        ("scopes", "--help"),
        ("scopes", "list", "--help"),
        ("scopes", "grant", "--help"),
        ("scopes", "revoke", "--help"),
        ("scopes", "export", "--help"),
        ("scopes", "import", "--help"),
        ("clients", "--help"),
        ("clients", "list", "--help"),
        ("clients", "bind", "--help"),
        ("clients", "unbind", "--help"),
        ("clients", "policy", "--help"),
        ("clients", "tenants", "--help"),
        ("clients", "suspend", "--help"),
        ("clients", "unsuspend", "--help"),
    ],
)
def test_help(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        call_command(*argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_missing_action() -> None:
    with pytest.raises(CommandError, match="ACTION"):
        run("scopes")
    with pytest.raises(CommandError, match="invalid choice"):
        run("clients", "frobnicate")


# --- scopes grant --------------------------------------------------------------------------


def test_grant_creates_mapping_and_clears_cache() -> None:
    assert permissions_for(frozenset({"todo:admin"})) == frozenset()  # cached as empty
    out = run("scopes", "grant", "todo:admin", "todos.delete_todo", "todos.add_todo")
    assert "Created scope todo:admin." in out
    assert "Granted to todo:admin: todos.add_todo, todos.delete_todo" in out
    assert permissions_for(frozenset({"todo:admin"})) == {"todos.add_todo", "todos.delete_todo"}
    assert state()["todo:admin"] == ("", {"todos.add_todo", "todos.delete_todo"})


def test_grant_adds_to_existing_mapping() -> None:
    assert permissions_for(frozenset({"todo:read"})) == READ
    out = run("scopes", "grant", "todo:read", "todos.view_todo", "todos.add_todo")
    assert "Created" not in out
    assert "Granted to todo:read: todos.add_todo" in out
    assert "Already granted to todo:read: todos.view_todo" in out
    assert permissions_for(frozenset({"todo:read"})) == {"todos.view_todo", "todos.add_todo"}


def test_grant_twice_changes_nothing() -> None:
    run("scopes", "grant", "x:y", "todos.view_todo")
    before = state()
    out = run("scopes", "grant", "x:y", "todos.view_todo")
    assert "Granted" not in out
    assert "Already granted to x:y: todos.view_todo" in out
    assert state() == before


def test_grant_description() -> None:
    run("scopes", "grant", "x:y", "todos.view_todo", "--description", "first")
    assert state()["x:y"][0] == "first"
    out = run("scopes", "grant", "x:y", "todos.view_todo", "--description", "second")
    assert "Updated description of x:y." in out
    assert state()["x:y"][0] == "second"


def test_grant_unknown_permissions_are_all_listed_and_nothing_changes() -> None:
    before = state()
    with pytest.raises(CommandError) as exc:
        run("scopes", "grant", "todo:read", "todos.view_todo", "todos.fly_todo", "nodot")
    message = str(exc.value)
    assert "todos.fly_todo" in message
    assert "nodot" in message
    assert "todos.view_todo" not in message.split("e.g.")[0]
    with pytest.raises(CommandError, match=r"todos\.fly_todo"):
        run("scopes", "grant", "brand:new", "todos.fly_todo")
    assert state() == before


@pytest.mark.parametrize(
    ("scope", "why"),
    [
        ("", "empty"),
        ("todo read", "whitespace"),
        ("todo:\tread", "whitespace"),
        ("x" * 201, "longer than 200"),
        ("to*do", "last character"),
        ("**", "last character"),
        ("*", "bare"),
        ('todo:"q"', "RFC 6749"),
        ("todo\\read", "RFC 6749"),
        ("tödo:read", "RFC 6749"),
    ],
)
def test_grant_bad_scope(scope: str, why: str) -> None:
    with pytest.raises(CommandError, match=why):
        run("scopes", "grant", scope, "todos.view_todo")
    assert state() == SEEDED


def test_grant_longest_allowed_scope() -> None:
    run("scopes", "grant", "x" * 200, "todos.view_todo")
    assert "x" * 200 in state()


def test_wildcard_mapping() -> None:
    assert permissions_for(frozenset({"mcp:tools:todos"})) == frozenset()
    out = run("scopes", "grant", "mcp:tools:*", "todos.view_todo")
    assert "wildcard" in out
    assert "todos.view_todo" in permissions_for(frozenset({"mcp:tools:todos"}))
    assert "todos.view_todo" in permissions_for(frozenset({"mcp:tools:anything"}))
    assert permissions_for(frozenset({"mcp:other"})) == frozenset()


def test_wildcard_token_scope_gets_union() -> None:
    assert permissions_for(frozenset({"todo:*"})) == READ | WRITE
    run("scopes", "grant", "todo:export", "auth.view_user")
    assert permissions_for(frozenset({"todo:*"})) == READ | WRITE | {"auth.view_user"}


# --- scopes revoke -------------------------------------------------------------------------


def test_revoke_permissions() -> None:
    assert permissions_for(frozenset({"todo:write"})) == WRITE
    out = run("scopes", "revoke", "todo:write", "todos.delete_todo", "todos.add_todo")
    assert "Revoked from todo:write: todos.add_todo, todos.delete_todo" in out
    assert permissions_for(frozenset({"todo:write"})) == {"todos.view_todo", "todos.change_todo"}


def test_revoke_permission_not_granted() -> None:
    out = run("scopes", "revoke", "todo:read", "todos.add_todo")
    assert "Not granted by todo:read (unchanged): todos.add_todo" in out
    assert "Revoked" not in out
    assert state() == SEEDED


def test_revoke_unknown_scope() -> None:
    with pytest.raises(CommandError, match="Unknown scope 'nope:nope'"):
        run("scopes", "revoke", "nope:nope", "todos.view_todo")
    with pytest.raises(CommandError, match="Unknown scope"):
        run("scopes", "revoke", "nope:nope", "--yes")


def test_revoke_unknown_permission() -> None:
    with pytest.raises(CommandError, match=r"todos\.fly_todo"):
        run("scopes", "revoke", "todo:write", "todos.view_todo", "todos.fly_todo")
    assert state() == SEEDED


def test_revoke_all_needs_yes_without_a_terminal() -> None:
    with pytest.raises(CommandError, match="--yes"):
        run("scopes", "revoke", "todo:write", stdin=io.StringIO("y\n"))
    assert state() == SEEDED


def test_revoke_all_with_yes() -> None:
    assert permissions_for(frozenset({"todo:write"})) == WRITE
    out = run("scopes", "revoke", "todo:write", "--yes")
    assert "Deleted scope todo:write." in out
    assert "todo:write" not in state()
    assert permissions_for(frozenset({"todo:write"})) == frozenset()


def test_revoke_all_asks_on_a_terminal() -> None:
    with pytest.raises(CommandError, match="Aborted"):
        run("scopes", "revoke", "todo:write", stdin=TTY("n\n"))
    assert state() == SEEDED
    out = run("scopes", "revoke", "todo:write", stdin=TTY("y\n"))
    assert "[y/N]" in out
    assert "todo:write" not in state()


# --- scopes export / import ----------------------------------------------------------------

EXPECTED_EXPORT = {
    "version": 1,
    "scopes": {
        "todo:read": {"description": "Read todos", "permissions": ["todos.view_todo"]},
        "todo:write": {
            "description": "Create, update and delete todos",
            "permissions": [
                "todos.add_todo",
                "todos.change_todo",
                "todos.delete_todo",
                "todos.view_todo",
            ],
        },
    },
}


def test_export() -> None:
    out = run("scopes", "export")
    assert json.loads(out) == EXPECTED_EXPORT
    assert list(json.loads(out)) == ["version", "scopes"]
    assert run("scopes", "export") == out  # stable


def test_export_is_sorted() -> None:
    run("scopes", "grant", "b:b", "todos.view_todo", "auth.view_user")
    run("scopes", "grant", "a:a", "todos.view_todo")
    doc = json.loads(run("scopes", "export"))
    assert list(doc["scopes"]) == ["a:a", "b:b", "todo:read", "todo:write"]
    assert doc["scopes"]["b:b"]["permissions"] == ["auth.view_user", "todos.view_todo"]


def _changed_doc() -> dict[str, Any]:
    return {
        "version": 1,
        "scopes": {
            "todo:read": {"description": "Read todos", "permissions": ["todos.view_todo"]},
            "todo:write": {
                "description": "Write todos",
                "permissions": ["todos.view_todo", "todos.add_todo"],
            },
            "todo:admin": {"description": "Admin", "permissions": ["todos.delete_todo"]},
        },
    }


def test_import_applies_and_is_idempotent(tmp_path: Path) -> None:
    path = write_json(tmp_path, _changed_doc())
    assert permissions_for(frozenset({"todo:write"})) == WRITE
    out = run("scopes", "import", path)
    assert "Applying 2 change(s)" in out
    assert "+ create todo:admin" in out
    assert "~ update todo:write" in out
    assert "- todos.change_todo, todos.delete_todo" in out
    assert "Done: 2 change(s) applied." in out
    expected = {
        "todo:read": ("Read todos", READ),
        "todo:write": ("Write todos", {"todos.view_todo", "todos.add_todo"}),
        "todo:admin": ("Admin", {"todos.delete_todo"}),
    }
    assert state() == expected
    assert permissions_for(frozenset({"todo:write"})) == {"todos.view_todo", "todos.add_todo"}

    again = run("scopes", "import", path)
    assert "No changes" in again
    assert state() == expected


def test_import_keeps_unlisted_scopes_without_prune(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"version": 1, "scopes": {}})
    assert "No changes" in run("scopes", "import", path)
    assert state() == SEEDED


def test_import_dry_run_changes_nothing(tmp_path: Path) -> None:
    path = write_json(tmp_path, _changed_doc())
    out = run("scopes", "import", path, "--dry-run")
    assert "Would apply 2 change(s)" in out
    assert "+ create todo:admin" in out
    assert "Dry run: nothing changed." in out
    assert state() == SEEDED
    out = run("scopes", "import", path, "--dry-run", "--prune")
    assert "Dry run" in out
    assert state() == SEEDED


def test_import_prune(tmp_path: Path) -> None:
    doc = {"version": 1, "scopes": {"todo:read": EXPECTED_EXPORT["scopes"]["todo:read"]}}
    path = write_json(tmp_path, doc)
    dry = run("scopes", "import", path, "--prune", "--dry-run")
    assert "- delete todo:write" in dry
    with pytest.raises(CommandError, match="--yes"):
        run("scopes", "import", path, "--prune")
    assert state() == SEEDED
    with pytest.raises(CommandError, match="Aborted"):
        run("scopes", "import", path, "--prune", stdin=TTY("no\n"))
    assert state() == SEEDED
    out = run("scopes", "import", path, "--prune", "--yes")
    assert "- delete todo:write" in out
    assert state() == {"todo:read": SEEDED["todo:read"]}
    assert permissions_for(frozenset({"todo:write"})) == frozenset()
    # Nothing left to prune: no confirmation needed.
    assert "No changes" in run("scopes", "import", path, "--prune")


def test_import_prune_on_a_terminal(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"version": 1, "scopes": {}})
    run("scopes", "import", path, "--prune", stdin=TTY("y\n"))
    assert state() == {}


def test_import_from_stdin() -> None:
    out = run("scopes", "import", "-", stdin=io.StringIO(json.dumps(_changed_doc())))
    assert "from stdin" in out
    assert "todo:admin" in state()


def test_import_prune_from_stdin_needs_yes() -> None:
    doc = json.dumps({"version": 1, "scopes": {}})
    with pytest.raises(CommandError, match="--yes"):
        run("scopes", "import", "-", "--prune", stdin=TTY(doc))
    assert state() == SEEDED
    run("scopes", "import", "-", "--prune", "--yes", stdin=io.StringIO(doc))
    assert state() == {}


def test_import_shorthand_lists_keep_descriptions(tmp_path: Path) -> None:
    path = write_json(
        tmp_path, {"version": 1, "scopes": {"todo:read": ["todos.view_todo", "todos.add_todo"]}}
    )
    run("scopes", "import", path)
    assert state()["todo:read"] == ("Read todos", {"todos.view_todo", "todos.add_todo"})


def test_import_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="Cannot read"):
        run("scopes", "import", str(tmp_path / "nope.json"))
    with pytest.raises(CommandError, match="Cannot read"):
        run("scopes", "import", str(tmp_path))  # a directory


@pytest.mark.parametrize("text", ["", "{", "not json", '{"version": 1,}', "\ud800"])
def test_import_bad_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    with pytest.raises(CommandError, match=r"not valid JSON|Cannot read"):
        run("scopes", "import", str(path))
    assert state() == SEEDED


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ([], "expected"),
        ("just a string", "expected"),
        ({"scopes": {}}, "'version' must be 1"),
        ({"version": 2, "scopes": {}}, "'version' must be 1"),
        ({"version": "1", "scopes": {}}, "'version' must be 1"),
        ({"version": True, "scopes": {}}, "'version' must be 1"),
        ({"version": 1}, "'scopes' must be an object"),
        ({"version": 1, "scopes": []}, "'scopes' must be an object"),
        ({"version": 1, "scopes": {}, "extra": 1}, "unknown top-level key"),
        ({"version": 1, "scopes": {"a:b": "todos.view_todo"}}, "must be an object or a list"),
        ({"version": 1, "scopes": {"a:b": {}}}, "missing 'permissions'"),
        ({"version": 1, "scopes": {"a:b": {"permissions": "x.y"}}}, "must be a list of strings"),
        ({"version": 1, "scopes": {"a:b": {"permissions": [1]}}}, "must be a list of strings"),
        ({"version": 1, "scopes": {"a:b": [None]}}, "must be a list of strings"),
        (
            {"version": 1, "scopes": {"a:b": {"permissions": [], "perms": []}}},
            "unknown key",
        ),
        (
            {"version": 1, "scopes": {"a:b": {"permissions": [], "description": 5}}},
            "description",
        ),
        (
            {"version": 1, "scopes": {"a:b": {"permissions": [], "description": "d" * 256}}},
            "description",
        ),
        ({"version": 1, "scopes": {"a b": []}}, "whitespace"),
        ({"version": 1, "scopes": {"a*b": []}}, "last character"),
        ({"version": 1, "scopes": {"": []}}, "empty"),
    ],
)
def test_import_wrong_shape(tmp_path: Path, doc: Any, why: str) -> None:
    path = write_json(tmp_path, json.dumps(doc))
    with pytest.raises(CommandError, match=why):
        run("scopes", "import", path)
    assert state() == SEEDED


def test_import_reports_every_problem(tmp_path: Path) -> None:
    doc = {"version": 3, "scopes": {"a b": [], "ok:ok": {"permissions": 1}}}
    with pytest.raises(CommandError) as exc:
        run("scopes", "import", write_json(tmp_path, doc))
    message = str(exc.value)
    assert "'version' must be 1" in message
    assert "whitespace" in message
    assert "must be a list of strings" in message


def test_import_duplicate_keys(tmp_path: Path) -> None:
    text = '{"version": 1, "scopes": {"a:b": [], "a:b": ["todos.view_todo"]}}'
    with pytest.raises(CommandError, match="duplicate key 'a:b'"):
        run("scopes", "import", write_json(tmp_path, text))
    assert state() == SEEDED


def test_import_unknown_permission_is_all_or_nothing(tmp_path: Path) -> None:
    doc = _changed_doc()
    doc["scopes"]["todo:zzz"] = {"permissions": ["todos.fly_todo", "auth.nope"]}
    with pytest.raises(CommandError) as exc:
        run("scopes", "import", write_json(tmp_path, doc))
    assert "todos.fly_todo" in str(exc.value)
    assert "auth.nope" in str(exc.value)
    assert state() == SEEDED


def test_export_import_round_trip(tmp_path: Path) -> None:
    run("scopes", "grant", "mcp:tools:*", "todos.view_todo", "--description", "Tools ✓")
    run("scopes", "grant", "todo:empty", "auth.view_user")
    run("scopes", "revoke", "todo:empty", "auth.view_user")  # a mapping with no permissions
    exported = run("scopes", "export")
    original = state()
    assert original["todo:empty"] == ("", frozenset())

    path = write_json(tmp_path, exported)
    assert "No changes" in run("scopes", "import", path, "--prune")

    run("scopes", "revoke", "mcp:tools:*", "--yes")
    run("scopes", "revoke", "todo:write", "todos.delete_todo")
    run("scopes", "grant", "todo:read", "todos.add_todo", "--description", "changed")
    run("scopes", "grant", "stray:scope", "todos.view_todo")
    assert state() != original

    run("scopes", "import", path, "--prune", "--yes")
    assert state() == original
    assert run("scopes", "export") == exported
    assert "No changes" in run("scopes", "import", path, "--prune")


def test_import_into_empty_database(tmp_path: Path) -> None:
    path = write_json(tmp_path, run("scopes", "export"))
    ScopeMapping.objects.all().delete()
    assert permissions_for(frozenset({"todo:read"})) == frozenset()
    run("scopes", "import", path)
    assert state() == SEEDED
    assert permissions_for(frozenset({"todo:read"})) == READ


# --- clients -------------------------------------------------------------------------------


def _token(client_id: str, **claims: Any) -> VerifiedToken:
    return VerifiedToken(
        claims=claims,
        client_id=client_id,
        subject="s",
        scopes=frozenset(),
        token_id="t",
        issuer=get_settings().default_issuer,
    )


def _principal(client_id: str) -> Principal:
    issuer = get_settings().default_issuer
    return Principal(
        client_id=client_id,
        subject="s",
        tenant=TenantRef(1, "acme", issuer),
        scopes=frozenset(),
        permissions=frozenset(),
        token_id="t",
        issuer=issuer,
    )


def test_clients_list_empty() -> None:
    assert "No client bindings or policies." in run("clients", "list")
    assert json.loads(run("clients", "list", "--json")) == []


def test_clients_list() -> None:
    acme = Tenant.objects.create(external_id="acme")
    ClientBinding.objects.create(client_id="bot-1", tenant=acme)
    ClientPolicy.objects.create(client_id="bot-1", rate="600/m", note="batch jobs")
    ClientPolicy.objects.create(client_id="bot-2", mode="blocked")
    iss = get_settings().default_issuer
    out = run("clients", "list").splitlines()
    assert out[0].split() == ["CLIENT_ID", "TENANT", "POLICY", "ISSUER", "NOTE"]
    assert out[1].split() == ["bot-1", "acme", "600/m", iss, "batch", "jobs"]
    assert out[2].split() == ["bot-2", "-", "blocked", iss]
    assert json.loads(run("clients", "list", "--json")) == [
        {
            "client_id": "bot-1",
            "issuer": iss,
            "tenant": "acme",
            "policy": "600/m",
            "note": "batch jobs",
        },
        {"client_id": "bot-2", "issuer": iss, "tenant": None, "policy": "blocked", "note": ""},
    ]


def test_bind_unknown_tenant() -> None:
    with pytest.raises(CommandError, match=r"Unknown tenant 'acme'.*--create-tenant"):
        run("clients", "bind", "bot-1", "acme")
    assert not ClientBinding.objects.exists()
    assert not Tenant.objects.exists()


def test_bind_and_resolve() -> None:
    with pytest.raises(AccessDenied):
        tenancy.resolve(_token("bot-1"))
    out = run("clients", "bind", "bot-1", "acme", "--create-tenant")
    assert "Created tenant acme." in out
    assert "Bound bot-1 to tenant acme." in out
    assert tenancy.resolve(_token("bot-1")).external_id == "acme"
    assert "No change" in run("clients", "bind", "bot-1", "acme")
    assert ClientBinding.objects.get().tenant.external_id == "acme"


def test_bind_existing_tenant() -> None:
    Tenant.objects.create(external_id="acme")
    out = run("clients", "bind", "bot-1", "acme")
    assert "Created tenant" not in out
    assert ClientBinding.objects.get(client_id="bot-1").tenant.external_id == "acme"


def test_rebind_needs_confirmation() -> None:
    run("clients", "bind", "bot-1", "acme", "--create-tenant")
    Tenant.objects.create(external_id="globex")
    assert tenancy.resolve(_token("bot-1")).external_id == "acme"
    with pytest.raises(CommandError, match="--yes"):
        run("clients", "bind", "bot-1", "globex")
    with pytest.raises(CommandError, match="Aborted"):
        run("clients", "bind", "bot-1", "globex", stdin=TTY("\n"))
    assert ClientBinding.objects.get().tenant.external_id == "acme"
    out = run("clients", "bind", "bot-1", "globex", "--yes")
    assert "Moved bot-1 from tenant acme to globex." in out
    assert tenancy.resolve(_token("bot-1")).external_id == "globex"


def test_bind_to_suspended_tenant_warns() -> None:
    Tenant.objects.create(external_id="acme", suspended=True)
    assert "Warning: tenant acme is suspended." in run("clients", "bind", "bot-1", "acme")


@pytest.mark.parametrize(
    ("client_id", "tenant"), [("", "acme"), ("bot 1", "acme"), ("bot-1", " acme"), ("x" * 256, "a")]
)
def test_bind_bad_ids(client_id: str, tenant: str) -> None:
    with pytest.raises(CommandError):
        run("clients", "bind", client_id, tenant, "--create-tenant")
    assert not ClientBinding.objects.exists()
    assert not Tenant.objects.exists()


def test_unbind() -> None:
    run("clients", "bind", "bot-1", "acme", "--create-tenant")
    assert tenancy.resolve(_token("bot-1")).external_id == "acme"
    with pytest.raises(CommandError, match="--yes"):
        run("clients", "unbind", "bot-1")
    assert ClientBinding.objects.exists()
    out = run("clients", "unbind", "bot-1", "--yes")
    assert "Unbound bot-1 (was tenant acme)." in out
    assert not ClientBinding.objects.exists()
    assert Tenant.objects.filter(external_id="acme").exists()  # the tenant stays
    with pytest.raises(AccessDenied):
        tenancy.resolve(_token("bot-1"))


def test_unbind_on_a_terminal() -> None:
    run("clients", "bind", "bot-1", "acme", "--create-tenant")
    run("clients", "unbind", "bot-1", stdin=TTY("yes\n"))
    assert not ClientBinding.objects.exists()


def test_unbind_unknown_client() -> None:
    with pytest.raises(CommandError, match="no tenant binding"):
        run("clients", "unbind", "ghost", "--yes")


def test_policy_rate() -> None:
    assert ratelimit.rate_for(_principal("bot-1")) == ("1000/m", "default")
    out = run("clients", "policy", "bot-1", "--rate", "600/m", "--note", "batch")
    assert "Policy for bot-1: 600/m (was default)." in out
    policy = ClientPolicy.objects.get(client_id="bot-1")
    assert (policy.mode, policy.rate, policy.note) == ("custom", "600/m", "batch")
    assert ratelimit.rate_for(_principal("bot-1")) == ("600/m", "client")
    assert "No change" in run("clients", "policy", "bot-1", "--rate", "600/m")
    run("clients", "policy", "bot-1", "--rate", "10/s")
    policy.refresh_from_db()
    assert (policy.rate, policy.note) == ("10/s", "batch")  # the note is kept


def test_policy_unlimited_and_blocked() -> None:
    run("clients", "policy", "bot-1", "--rate", "600/m")
    assert ratelimit.rate_for(_principal("bot-1")) == ("600/m", "client")
    out = run("clients", "policy", "bot-1", "--unlimited")
    assert "Policy for bot-1: unlimited (was 600/m)." in out
    assert ClientPolicy.objects.get(client_id="bot-1").rate == ""
    assert ratelimit.rate_for(_principal("bot-1")) == (None, "unlimited")
    run("clients", "policy", "bot-1", "--blocked")
    assert ClientPolicy.objects.get(client_id="bot-1").mode == "blocked"
    with pytest.raises(AccessDenied):
        ratelimit.rate_for(_principal("bot-1"))


def test_policy_default_removes_override() -> None:
    assert "No change" in run("clients", "policy", "bot-1", "--default")
    run("clients", "policy", "bot-1", "--blocked")
    with pytest.raises(AccessDenied):
        ratelimit.rate_for(_principal("bot-1"))  # the policy is now cached
    out = run("clients", "policy", "bot-1", "--default")
    assert "Policy for bot-1: default (was blocked)." in out
    assert not ClientPolicy.objects.exists()
    assert ratelimit.rate_for(_principal("bot-1")) == ("1000/m", "default")


@pytest.mark.parametrize("rate", ["fast", "10/x", "", "/m", "-1/m", "0/m", "10 per minute"])
def test_policy_bad_rate(rate: str) -> None:
    with pytest.raises(CommandError, match="rate"):
        run("clients", "policy", "bot-1", "--rate", rate)
    assert not ClientPolicy.objects.exists()


@pytest.mark.parametrize(
    "flags", [(), ("--unlimited", "--blocked"), ("--rate", "1/m", "--default")]
)
def test_policy_needs_exactly_one_mode(flags: tuple[str, ...]) -> None:
    with pytest.raises(CommandError):
        run("clients", "policy", "bot-1", *flags)
    assert not ClientPolicy.objects.exists()


def test_tenants_list() -> None:
    assert "No tenants." in run("clients", "tenants")
    run("clients", "bind", "bot-1", "acme", "--create-tenant")
    run("clients", "bind", "bot-2", "acme")
    Tenant.objects.create(external_id="globex", name="Globex Corp", suspended=True)
    iss = get_settings().default_issuer
    out = run("clients", "tenants").splitlines()
    assert out[0].split() == ["TENANT", "NAME", "STATUS", "BOUND_CLIENTS", "ALIASES", "ISSUER"]
    assert out[1].split() == ["acme", "acme", "active", "2", "0", iss]
    assert out[2].split() == ["globex", "Globex", "Corp", "suspended", "0", "0", iss]
    common = {"issuer": iss, "aliases": 0}
    assert json.loads(run("clients", "tenants", "--json")) == [
        {"external_id": "acme", "name": "acme", "suspended": False, "bound_clients": 2, **common},
        {
            "external_id": "globex",
            "name": "Globex Corp",
            "suspended": True,
            "bound_clients": 0,
            **common,
        },
    ]


def test_suspend_and_unsuspend() -> None:
    Tenant.objects.create(external_id="acme")
    assert tenancy.resolve(_token("c", org_id="acme")).external_id == "acme"  # now cached
    assert "Tenant acme is now suspended." in run("clients", "suspend", "acme")
    assert Tenant.objects.get().suspended
    with pytest.raises(AccessDenied, match="suspended"):
        tenancy.resolve(_token("c", org_id="acme"))
    assert "already suspended" in run("clients", "suspend", "acme")
    assert "Tenant acme is now active." in run("clients", "unsuspend", "acme")
    assert not Tenant.objects.get().suspended
    assert tenancy.resolve(_token("c", org_id="acme")).external_id == "acme"
    assert "already active" in run("clients", "unsuspend", "acme")


def test_suspend_unknown_tenant() -> None:
    with pytest.raises(CommandError, match="Unknown tenant 'ghost'"):
        run("clients", "suspend", "ghost")
    with pytest.raises(CommandError, match="Unknown tenant 'ghost'"):
        run("clients", "unsuspend", "ghost")
