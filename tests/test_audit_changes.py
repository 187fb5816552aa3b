"""The trail audits itself: configuration changes in the admin and by command, and exports.

Also the admin pages of tenants, scope mappings and clients: what they show and refuse.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent, Outcome
from audit.recorder import record
from mcpauth.conf import get_settings
from mcpauth.models import ClientBinding, ClientPolicy, ScopeMapping, Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("alice", "alice@example.com", "pw"))
    return client


@pytest.fixture(autouse=True)
def _os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "ops")


def config_rows() -> list[tuple[str, str, dict[str, Any]]]:
    rows = AuditEvent.objects.filter(method__startswith="config/").order_by("id")
    return [(r.method, r.actor, r.arguments) for r in rows]


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), stdin=io.StringIO())
    return out.getvalue()


def perm(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


# --- by command -----------------------------------------------------------------------------------


def test_tenant_suspension_by_command_is_audited():
    Tenant.objects.create(external_id="acme")
    run("clients", "suspend", "acme")
    run("clients", "unsuspend", "acme")
    run("clients", "unsuspend", "acme")  # no change: no row
    assert config_rows() == [
        (
            "config/tenant.suspend",
            "cli:ops",
            {"target": "acme", "changes": {"suspended": [False, True]}},
        ),
        (
            "config/tenant.unsuspend",
            "cli:ops",
            {"target": "acme", "changes": {"suspended": [True, False]}},
        ),
    ]
    row = AuditEvent.objects.filter(method="config/tenant.suspend").get()
    assert (row.tenant, row.outcome, row.status) == ("acme", Outcome.OK, 0)


def test_bindings_and_policies_by_command_are_audited():
    Tenant.objects.create(external_id="acme")
    Tenant.objects.create(external_id="globex")
    run("clients", "bind", "svc", "acme")
    run("clients", "bind", "svc", "globex", "--yes")
    run("clients", "policy", "svc", "--rate", "60/m", "--note", "batch")
    run("clients", "policy", "svc", "--blocked")
    run("clients", "policy", "svc", "--default")
    run("clients", "unbind", "svc", "--yes")
    methods = [m for m, _, _ in config_rows()]
    assert methods == [
        "config/client_binding.create",
        "config/client_binding.update",
        "config/client_policy.create",
        "config/client_policy.update",
        "config/client_policy.delete",
        "config/client_binding.delete",
    ]
    rows = config_rows()
    assert rows[1][2]["changes"] == {"tenant": ["acme", "globex"]}
    assert rows[3][2]["changes"] == {"mode": ["custom", "blocked"], "rate": ["60/m", ""]}
    assert {r.client_id for r in AuditEvent.objects.filter(method__startswith="config/")} == {"svc"}


def test_scope_changes_by_command_are_audited():
    run("scopes", "grant", "notes:read", "todos.view_todo", "--description", "read")
    run("scopes", "grant", "notes:read", "todos.add_todo")
    run("scopes", "revoke", "notes:read", "todos.add_todo")
    run("scopes", "revoke", "notes:read", "--yes")
    assert config_rows() == [
        (
            "config/scope_mapping.create",
            "cli:ops",
            {
                "target": "notes:read",
                "changes": {"permissions": [[], ["todos.view_todo"]], "description": ["", "read"]},
            },
        ),
        (
            "config/scope_mapping.update",
            "cli:ops",
            {
                "target": "notes:read",
                "changes": {
                    "permissions": [["todos.view_todo"], ["todos.add_todo", "todos.view_todo"]]
                },
            },
        ),
        (
            "config/scope_mapping.update",
            "cli:ops",
            {
                "target": "notes:read",
                "changes": {
                    "permissions": [["todos.add_todo", "todos.view_todo"], ["todos.view_todo"]]
                },
            },
        ),
        (
            "config/scope_mapping.delete",
            "cli:ops",
            {"target": "notes:read", "changes": {"permissions": [["todos.view_todo"], []]}},
        ),
    ]


def test_scope_import_is_audited_per_change(tmp_path):
    ScopeMapping.objects.create(scope="old:scope")
    doc = tmp_path / "scopes.json"
    doc.write_text('{"version": 1, "scopes": {"new:scope": ["todos.view_todo"]}}')
    before = set(ScopeMapping.objects.values_list("scope", flat=True)) - {"old:scope"}
    run("scopes", "import", str(doc), "--prune", "--yes")
    got = [(m, a["target"]) for m, _, a in config_rows()]
    assert got[0] == ("config/scope_mapping.create", "new:scope")
    # Every pruned mapping (the seeded todo scopes too) has its own row.
    assert sorted(got[1:]) == sorted(
        ("config/scope_mapping.delete", s) for s in {"old:scope", *before}
    )


def test_a_bare_star_is_refused_by_the_model_and_every_entry_point(staff):
    with pytest.raises(ValidationError) as caught:
        ScopeMapping(scope="*").full_clean()
    assert "bare '*'" in str(caught.value)
    with pytest.raises(CommandError, match="bare"):
        run("scopes", "grant", "*", "todos.view_todo")
    response = staff.post(
        reverse("admin:mcpauth_scopemapping_add"),
        {"scope": "*", "description": "", "permissions": [perm("todos.view_todo").pk]},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "bare" in response.content.decode()
    assert not ScopeMapping.objects.filter(scope="*").exists()
    assert config_rows() == []


# --- in the admin ---------------------------------------------------------------------------------


def test_admin_suspend_action_is_audited_with_the_staff_user(staff):
    acme = Tenant.objects.create(external_id="acme")
    staff.post(
        reverse("admin:mcpauth_tenant_changelist"),
        {"action": "suspend", "_selected_action": [acme.pk]},
    )
    acme.refresh_from_db()
    assert acme.suspended
    (row,) = AuditEvent.objects.filter(method="config/tenant.suspend")
    assert (row.actor, row.tenant, row.status, row.client_ip) == ("alice", "acme", 200, "127.0.0.1")


def test_admin_edits_are_audited(staff):
    acme = Tenant.objects.create(external_id="acme", name="Acme")
    url = reverse("admin:mcpauth_tenant_change", args=[acme.pk])
    staff.post(url, {"external_id": "acme", "name": "Acme Corp", "suspended": "on"})
    staff.post(
        reverse("admin:mcpauth_clientpolicy_add"),
        {"client_id": "svc", "mode": "custom", "rate": "10/m", "note": ""},
    )
    policy = ClientPolicy.objects.get()
    staff.post(reverse("admin:mcpauth_clientpolicy_delete", args=[policy.pk]), {"post": "yes"})
    staff.post(
        reverse("admin:mcpauth_scopemapping_add"),
        {"scope": "todo:admin", "description": "", "permissions": [perm("todos.delete_todo").pk]},
    )
    assert config_rows() == [
        (
            "config/tenant.suspend",
            "alice",
            {
                "target": "acme",
                "changes": {"name": ["Acme", "Acme Corp"], "suspended": [False, True]},
            },
        ),
        (
            "config/client_policy.create",
            "alice",
            {
                "target": "svc",
                "changes": {
                    "issuer": [None, get_settings().default_issuer],
                    "client_id": [None, "svc"],
                    "mode": [None, "custom"],
                    "rate": [None, "10/m"],
                    "note": [None, ""],
                },
            },
        ),
        (
            "config/client_policy.delete",
            "alice",
            {
                "target": "svc",
                "changes": {
                    "issuer": [get_settings().default_issuer, None],
                    "client_id": ["svc", None],
                    "mode": ["custom", None],
                    "rate": ["10/m", None],
                    "note": ["", None],
                },
            },
        ),
        (
            "config/scope_mapping.create",
            "alice",
            {
                "target": "todo:admin",
                "changes": {
                    "scope": [None, "todo:admin"],
                    "description": [None, ""],
                    "permissions": [None, ["todos.delete_todo"]],
                },
            },
        ),
    ]


def test_a_change_and_its_audit_row_roll_back_together(staff, monkeypatch):
    acme = Tenant.objects.create(external_id="acme")

    def broken(**kwargs: Any) -> int:
        raise RuntimeError("audit down")

    monkeypatch.setattr("audit.changes.record", broken)
    with pytest.raises(RuntimeError):
        staff.post(
            reverse("admin:mcpauth_tenant_change", args=[acme.pk]),
            {"external_id": "acme", "name": "x", "suspended": "on"},
        )
    acme.refresh_from_db()
    assert not acme.suspended and acme.name == ""


def test_admin_export_is_audited_with_its_filter(staff):
    record(outcome=Outcome.DENIED, status=403, request_id="r1", method="tools/call", token_id="t1")
    response = staff.get(
        reverse("admin:audit_auditevent_export"),
        {"format": "jsonl", "outcome": "denied", "token_id": "t1"},
    )
    assert b"".join(response.streaming_content).count(b"\n") == 1
    (row,) = AuditEvent.objects.filter(method="audit/export")
    assert row.actor == "alice" and row.status == 200
    assert row.arguments == {
        "format": "jsonl",
        "filters": [["outcome", "denied"], ["token_id", "t1"]],
        "rows": 1,
        "completed": True,
    }


# --- what the pages show --------------------------------------------------------------------------


def test_tenant_list_reads_suspended_and_links_to_its_rows(staff):
    Tenant.objects.create(external_id="acme", suspended=True)
    Tenant.objects.create(external_id="globex")
    record(outcome=Outcome.OK, status=200, request_id="r", tenant="acme", method="tools/call")
    html = staff.get(reverse("admin:mcpauth_tenant_changelist")).content.decode()
    assert '<span class="mcp-badge mcp-badge-bad">suspended</span>' in html
    assert '<span class="mcp-badge mcp-badge-ok">active</span>' in html
    assert "icon-yes.svg" not in html and "icon-no.svg" not in html  # no ✓ meaning "suspended"
    assert "/admin/audit/auditevent/?tenant=acme&amp;created_at__gte=" in html
    assert "never" in html  # globex has no rows


def test_tenant_external_id_is_frozen_once_audit_rows_name_it(staff):
    acme = Tenant.objects.create(external_id="acme")
    fresh = Tenant.objects.create(external_id="fresh")
    record(outcome=Outcome.OK, status=200, request_id="r", tenant="acme")
    acme.external_id = "renamed"
    with pytest.raises(ValidationError, match="audit rows"):
        acme.full_clean()
    fresh.external_id = "renamed-fresh"
    fresh.full_clean()  # no rows name it: still editable
    page = staff.get(reverse("admin:mcpauth_tenant_change", args=[acme.pk])).content.decode()
    assert 'name="external_id"' not in page  # read-only
    assert "all audit rows" in page and "binding(s)" in page
    staff.post(
        reverse("admin:mcpauth_tenant_change", args=[acme.pk]), {"external_id": "x", "name": ""}
    )
    assert Tenant.objects.filter(external_id="acme").exists()


def test_client_pages_link_to_the_clients_calls(staff):
    tenant = Tenant.objects.create(external_id="acme")
    binding = ClientBinding.objects.create(client_id="svc", tenant=tenant)
    policy = ClientPolicy.objects.create(client_id="svc", mode="unlimited")
    link = "/admin/audit/auditevent/?client_id=svc"
    for url in (
        reverse("admin:mcpauth_clientbinding_changelist"),
        reverse("admin:mcpauth_clientbinding_change", args=[binding.pk]),
        reverse("admin:mcpauth_clientpolicy_changelist"),
        reverse("admin:mcpauth_clientpolicy_change", args=[policy.pk]),
    ):
        assert link in staff.get(url).content.decode(), url


def test_scope_mapping_form_offers_only_governed_permissions_and_shows_unlocked_tools(staff):
    import todos.mcp  # noqa: F401  (registers the tools)
    from mcpauth.runtime.registry import registry

    html = staff.get(reverse("admin:mcpauth_scopemapping_add")).content.decode()
    assert "Todos | todo | Can view todo" in html
    assert "Can add user" not in html and "Can view audit event" not in html
    in_use = registry.permissions_in_use()
    mapping = ScopeMapping.objects.create(scope="todo:reader")
    mapping.permissions.set([perm("todos.view_todo"), perm("auth.add_user")])
    page = staff.get(
        reverse("admin:mcpauth_scopemapping_change", args=[mapping.pk])
    ).content.decode()
    assert "Can add user" in page  # kept: a mapping never loses what it has
    expected = registry.tools_needing({"todos.view_todo", "auth.add_user"})
    assert expected and "todos.view_todo" in in_use
    assert ", ".join(expected) in page
    listing = staff.get(reverse("admin:mcpauth_scopemapping_changelist")).content.decode()
    assert "list_todos" in listing


def test_overview_needs_only_the_audit_view_permission(client):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get("/admin/audit/overview/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    client.force_login(User.objects.get(pk=user.pk))
    response = client.get("/admin/audit/overview/")
    assert response.status_code == 200 and b"Audit overview" in response.content
    assert b"/admin/audit/overview/" in client.get("/admin/").content


def test_api_docs_are_served_from_this_server():
    html = Client().get("/api/docs").content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html and "/static/ninja/swagger-ui.css" in html
    assert "cdn" not in html.lower()
    from django.contrib.staticfiles import finders

    assert finders.find("ninja/swagger-ui-bundle.js")
