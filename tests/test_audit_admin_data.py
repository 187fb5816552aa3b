"""Staff edits of tenant data in the admin are audited, whichever admin path made them.

The real admin, driven with Django's test client as a staff user holding only the todos
permissions: add, change, a move to another tenant, delete, ``delete_selected``, custom actions
and ``list_editable`` each leave ``data/todos.todo.<action>`` rows with the actor and the
tenant(s), and never a field value; a failing audit write takes the change back with it. The
test-only ``shelf`` app covers m2m fields and inlines (``save_related``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db.models import QuerySet
from django.http import HttpRequest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent, Outcome
from mcpauth.models import Tenant
from tests.shelf.models import Book, Label, Shelf
from todos.models import Todo

pytestmark = pytest.mark.django_db

#: A title no audit row may contain (rows hold field names, never values).
SECRET = "merger plan: acquire globex"
TODO_PERMS = ("view_todo", "add_todo", "change_todo", "delete_todo")


@pytest.fixture
def acme() -> Tenant:
    return Tenant.objects.create(external_id="acme", name="Acme")


@pytest.fixture
def globex() -> Tenant:
    return Tenant.objects.create(external_id="globex")


@pytest.fixture
def editor(client: Client) -> Client:
    """Staff, not superuser: only the todos permissions."""
    user = User.objects.create_user("erin", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="todos", codename__in=TODO_PERMS)
    )
    client.force_login(user)
    return client


@pytest.fixture
def todo_admin() -> Any:
    return admin.site._registry[Todo]


def data_rows() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(method__startswith="data/").order_by("id"))


def summary(rows: list[AuditEvent]) -> list[tuple[str, str, str]]:
    return [(r.method, r.actor, r.tenant) for r in rows]


def assert_no_values(rows: list[AuditEvent], *values: str) -> None:
    """No column and no part of ``arguments`` holds any of ``values``."""
    for row in rows:
        stored = json.dumps(
            {f.attname: str(getattr(row, f.attname)) for f in AuditEvent._meta.concrete_fields}
        )
        stored += json.dumps(row.arguments)
        for value in values:
            assert value not in stored, (value, row.method)


def make_todo(tenant: Tenant, title: str = SECRET) -> Todo:
    return Todo.all_tenants.create(tenant=tenant, title=title, created_by="user-1")


def change_form(todo: Todo, **changes: Any) -> dict[str, Any]:
    data = {
        "title": todo.title,
        "description": todo.description,
        "tenant": todo.tenant_id,
        **({"completed": "on"} if todo.completed else {}),
    }
    data.update(changes)
    return data


# --- add, change, move, delete ------------------------------------------------------------------


def test_add_is_audited_with_actor_tenant_and_field_names(editor, acme):
    response = editor.post(
        reverse("admin:todos_todo_add"),
        {"title": SECRET, "description": "call the bank", "tenant": acme.pk},
    )
    assert response.status_code == 302, response.content[:2000]
    todo = Todo.all_tenants.get()
    rows = data_rows()
    assert summary(rows) == [("data/todos.todo.create", "erin", "acme")]
    (row,) = rows
    assert row.arguments == {
        "id": str(todo.pk),
        "fields": ["completed", "created_at", "description", "tenant", "title", "updated_at"],
    }
    assert (row.outcome, row.status, row.client_ip) == (Outcome.OK, 200, "127.0.0.1")
    assert_no_values(rows, SECRET, "call the bank")


def test_change_is_audited_with_the_changed_field_names_only(editor, acme):
    todo = make_todo(acme)
    url = reverse("admin:todos_todo_change", args=[todo.pk])
    response = editor.post(url, change_form(todo, title="renamed: " + SECRET, completed="on"))
    assert response.status_code == 302
    rows = data_rows()
    assert summary(rows) == [("data/todos.todo.update", "erin", "acme")]
    assert rows[0].arguments == {
        "id": str(todo.pk),
        "fields": ["completed", "title", "updated_at"],
    }
    assert_no_values(rows, SECRET)


def test_moving_a_todo_to_another_tenant_is_in_both_tenants_trails(editor, acme, globex):
    todo = make_todo(acme)
    response = editor.post(
        reverse("admin:todos_todo_change", args=[todo.pk]), change_form(todo, tenant=globex.pk)
    )
    assert response.status_code == 302
    todo.refresh_from_db()
    assert todo.tenant_id == globex.pk
    rows = data_rows()
    assert summary(rows) == [
        ("data/todos.todo.update", "erin", "acme"),
        ("data/todos.todo.update", "erin", "globex"),
    ]
    expected = {
        "id": str(todo.pk),
        "fields": ["tenant", "updated_at"],
        "moved_from": "acme",
        "moved_to": "globex",
    }
    assert [r.arguments for r in rows] == [expected, expected]
    assert rows[0].request_id == rows[1].request_id  # one change, named in both trails
    # The changelist filtered by either tenant finds it.
    for tenant in ("acme", "globex"):
        assert AuditEvent.objects.filter(tenant=tenant, method__startswith="data/").count() == 1
    assert_no_values(rows, SECRET)


def test_the_delete_view_is_audited(editor, acme):
    todo = make_todo(acme)
    response = editor.post(reverse("admin:todos_todo_delete", args=[todo.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Todo.all_tenants.exists()
    rows = data_rows()
    assert summary(rows) == [("data/todos.todo.delete", "erin", "acme")]
    assert rows[0].arguments == {"id": str(todo.pk)}
    assert_no_values(rows, SECRET)


def test_delete_selected_leaves_one_row_per_deleted_todo_with_its_tenant(editor, acme, globex):
    todos = [make_todo(acme), make_todo(globex, "second " + SECRET), make_todo(acme, "kept")]
    response = editor.post(
        reverse("admin:todos_todo_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [todos[0].pk, todos[1].pk],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    assert list(Todo.all_tenants.values_list("title", flat=True)) == ["kept"]
    rows = data_rows()
    assert sorted(summary(rows)) == [
        ("data/todos.todo.delete", "erin", "acme"),
        ("data/todos.todo.delete", "erin", "globex"),
    ]
    assert sorted(r.arguments["id"] for r in rows) == sorted(str(t.pk) for t in todos[:2])
    assert {r.arguments["batch"] for r in rows} == {2}
    assert_no_values(rows, SECRET)


def test_the_delete_confirmation_page_changes_nothing_and_records_nothing(editor, acme):
    todo = make_todo(acme)
    response = editor.post(
        reverse("admin:todos_todo_changelist"),
        {"action": "delete_selected", "_selected_action": [todo.pk]},
    )
    assert response.status_code == 200 and b"Are you sure" in response.content
    assert Todo.all_tenants.exists() and data_rows() == []


def test_a_save_that_changes_nothing_leaves_no_row(client, acme):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    shelf = Shelf.all_tenants.create(tenant=acme, title="plain")
    client.post(reverse("admin:shelf_shelf_change", args=[shelf.pk]), shelf_form(shelf, []))
    assert data_rows() == []


# --- custom actions and list_editable -----------------------------------------------------------


@admin.action(description="Mark done", permissions=["change"])
def mark_done(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Todo]) -> None:
    queryset.update(completed=True)


@admin.action(description="Move to globex", permissions=["change"])
def move_to_globex(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Todo]) -> None:
    queryset.update(tenant=Tenant.objects.get(external_id="globex"))


@admin.action(description="Look only", permissions=["view"])
def look(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Todo]) -> None:
    return None


@pytest.fixture
def with_actions(todo_admin: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(todo_admin, "actions", [mark_done, move_to_globex, look])
    yield


def run_action(client: Client, name: str, todos: list[Todo]) -> Any:
    return client.post(
        reverse("admin:todos_todo_changelist"),
        {"action": name, "_selected_action": [t.pk for t in todos]},
    )


def test_a_custom_action_leaves_a_row_per_changed_todo(editor, acme, globex, with_actions):
    done = make_todo(acme)
    done.completed = True
    done.save()
    todos = [make_todo(acme), make_todo(globex), done]
    assert run_action(editor, "mark_done", todos).status_code == 302
    assert Todo.all_tenants.filter(completed=True).count() == 3
    rows = data_rows()
    # The todo that was done already did not change: no row for it.
    assert sorted(summary(rows)) == [
        ("data/todos.todo.mark_done", "erin", "acme"),
        ("data/todos.todo.mark_done", "erin", "globex"),
    ]
    assert sorted(r.arguments["id"] for r in rows) == sorted(str(t.pk) for t in todos[:2])
    assert {json.dumps(r.arguments["fields"]) for r in rows} == {'["completed"]'}
    assert {r.arguments["action"] for r in rows} == {"mark_done"}
    assert_no_values(rows, SECRET)


def test_a_custom_action_that_moves_todos_names_both_tenants(editor, acme, globex, with_actions):
    todo = make_todo(acme)
    assert run_action(editor, "move_to_globex", [todo]).status_code == 302
    rows = data_rows()
    assert summary(rows) == [
        ("data/todos.todo.move_to_globex", "erin", "acme"),
        ("data/todos.todo.move_to_globex", "erin", "globex"),
    ]
    assert (
        rows[0].arguments
        == rows[1].arguments
        == {
            "id": str(todo.pk),
            "action": "move_to_globex",
            "fields": ["tenant"],
            "moved_from": "acme",
            "moved_to": "globex",
        }
    )


def test_a_custom_action_that_changes_nothing_still_leaves_a_row_per_tenant(
    editor, acme, globex, with_actions
):
    todos = [make_todo(acme), make_todo(acme), make_todo(globex)]
    assert run_action(editor, "look", todos).status_code == 302
    rows = data_rows()
    assert sorted(summary(rows)) == [
        ("data/todos.todo.look", "erin", "acme"),
        ("data/todos.todo.look", "erin", "globex"),
    ]
    by_tenant = {r.tenant: r.arguments for r in rows}
    assert by_tenant["acme"]["selected"] == 2 and by_tenant["acme"]["changed"] == 0
    assert sorted(by_tenant["acme"]["ids"]) == sorted(str(t.pk) for t in todos[:2])
    assert by_tenant["globex"]["ids"] == [str(todos[2].pk)]


def test_list_editable_changes_are_audited(editor, acme, todo_admin, monkeypatch):
    monkeypatch.setattr(todo_admin, "list_editable", ("completed",))
    todo = make_todo(acme)
    response = editor.post(
        reverse("admin:todos_todo_changelist"),
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-MIN_NUM_FORMS": "0",
            "form-MAX_NUM_FORMS": "1000",
            "form-0-id": str(todo.pk),
            "form-0-completed": "on",
            "_save": "Save",
        },
    )
    assert response.status_code == 302
    todo.refresh_from_db()
    assert todo.completed
    rows = data_rows()
    assert summary(rows) == [("data/todos.todo.update", "erin", "acme")]
    assert rows[0].arguments == {"id": str(todo.pk), "fields": ["completed", "updated_at"]}


# --- a failing audit write takes the change back -------------------------------------------------


@pytest.fixture
def broken_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: Any) -> int:
        raise RuntimeError("audit down")

    monkeypatch.setattr("audit.changes.record", broken)


def test_a_failing_audit_write_rolls_back_a_change(editor, acme, globex, broken_audit):
    todo = make_todo(acme)
    with pytest.raises(RuntimeError, match="audit down"):
        editor.post(
            reverse("admin:todos_todo_change", args=[todo.pk]),
            change_form(todo, title="changed", tenant=globex.pk),
        )
    todo.refresh_from_db()
    assert (todo.title, todo.tenant_id) == (SECRET, acme.pk)
    assert not LogEntry.objects.exists()


def test_a_failing_audit_write_rolls_back_an_add(editor, acme, broken_audit):
    with pytest.raises(RuntimeError, match="audit down"):
        editor.post(reverse("admin:todos_todo_add"), {"title": "new", "tenant": acme.pk})
    assert not Todo.all_tenants.exists()


def test_a_failing_audit_write_rolls_back_a_delete(editor, acme, broken_audit):
    todo = make_todo(acme)
    with pytest.raises(RuntimeError, match="audit down"):
        editor.post(reverse("admin:todos_todo_delete", args=[todo.pk]), {"post": "yes"})
    assert Todo.all_tenants.filter(pk=todo.pk).exists()


def test_a_failing_audit_write_rolls_back_delete_selected(editor, acme, broken_audit):
    todos = [make_todo(acme), make_todo(acme)]
    with pytest.raises(RuntimeError, match="audit down"):
        editor.post(
            reverse("admin:todos_todo_changelist"),
            {"action": "delete_selected", "_selected_action": [t.pk for t in todos], "post": "y"},
        )
    assert Todo.all_tenants.count() == 2
    assert not LogEntry.objects.exists()  # the admin's own log goes back too


def test_a_failing_audit_write_rolls_back_a_custom_action(editor, acme, with_actions, broken_audit):
    todo = make_todo(acme)
    with pytest.raises(RuntimeError, match="audit down"):
        run_action(editor, "mark_done", [todo])
    todo.refresh_from_db()
    assert not todo.completed


# --- m2m fields and inlines are part of the change (save_related) -------------------------------


def shelf_form(shelf: Shelf, books: list[Book], **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": shelf.title,
        "tenant": shelf.tenant_id,
        "labels": [label.pk for label in shelf.labels.all()],
        "books-TOTAL_FORMS": str(len(books) + 1),
        "books-INITIAL_FORMS": str(len(books)),
        "books-MIN_NUM_FORMS": "0",
        "books-MAX_NUM_FORMS": "1000",
    }
    for i, book in enumerate(books):
        data[f"books-{i}-id"] = str(book.pk)
        data[f"books-{i}-shelf"] = str(shelf.pk)
        data[f"books-{i}-title"] = book.title
    data[f"books-{len(books)}-shelf"] = str(shelf.pk)
    data.update(changes)
    return data


def test_m2m_and_inline_changes_are_part_of_the_change(client, acme):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    red = Label.objects.create(name="red")
    shelf = Shelf.all_tenants.create(tenant=acme, title="Q3 " + SECRET)
    keep, edit, drop = (Book.objects.create(shelf=shelf, title=f"book {i}") for i in range(3))
    url = reverse("admin:shelf_shelf_change", args=[shelf.pk])
    data = shelf_form(
        shelf,
        [keep, edit, drop],
        **{
            "labels": [red.pk],
            "books-1-title": "edited " + SECRET,
            "books-2-DELETE": "on",
            "books-3-title": "added " + SECRET,
        },
    )
    response = client.post(url, data)
    assert response.status_code == 302, response.content[:3000]
    added = Book.objects.exclude(pk__in=[keep.pk, edit.pk]).get()
    rows = data_rows()
    assert summary(rows) == [("data/shelf.shelf.update", "root", "acme")]
    assert rows[0].arguments == {
        "id": str(shelf.pk),
        "fields": ["labels"],
        "inlines": [
            {
                "model": "shelf.book",
                "added": [str(added.pk)],
                "changed": {str(edit.pk): ["title"]},
                "deleted": [str(drop.pk)],
            }
        ],
    }
    assert_no_values(rows, SECRET, "red")

    # An inline change alone is a change too.
    edit.refresh_from_db()
    client.post(url, shelf_form(shelf, [keep, edit, added], **{"books-0-title": "retitled"}))
    rows = data_rows()
    assert len(rows) == 2
    assert rows[1].arguments == {
        "id": str(shelf.pk),
        "fields": [],
        "inlines": [{"model": "shelf.book", "changed": {str(keep.pk): ["title"]}}],
    }


def test_deleting_a_shelf_names_what_the_delete_cascaded_to(client, acme):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    shelf = Shelf.all_tenants.create(tenant=acme, title="old")
    Book.objects.create(shelf=shelf, title="a")
    Book.objects.create(shelf=shelf, title="b")
    client.post(reverse("admin:shelf_shelf_delete", args=[shelf.pk]), {"post": "yes"})
    (row,) = data_rows()
    assert (row.method, row.tenant) == ("data/shelf.shelf.delete", "acme")
    assert row.arguments == {
        "id": str(shelf.pk),
        "cascade": [["shelf.book", 2]],
    }


def test_deleting_a_tenant_names_the_data_it_takes_with_it(client, acme, globex):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    for _ in range(3):
        make_todo(acme)
    make_todo(globex)
    Shelf.all_tenants.create(tenant=acme, title="s")
    client.post(reverse("admin:mcpauth_tenant_delete", args=[acme.pk]), {"post": "yes"})
    (row,) = AuditEvent.objects.filter(method="config/tenant.delete")
    assert (row.actor, row.tenant) == ("root", "acme")
    assert row.arguments["cascade"] == [["shelf.shelf", 1], ["todos.todo", 3]]
    assert_no_values([row], SECRET)
    # Bulk: each tenant's row names its own data.
    other = Tenant.objects.create(external_id="initech")
    client.post(
        reverse("admin:mcpauth_tenant_changelist"),
        {"action": "delete_selected", "_selected_action": [globex.pk, other.pk], "post": "yes"},
    )
    rows = {
        r.tenant: r.arguments.get("cascade")
        for r in AuditEvent.objects.filter(method="config/tenant.delete").exclude(tenant="acme")
    }
    assert rows == {"globex": [["todos.todo", 1]], "initech": None}
