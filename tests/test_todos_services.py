"""The service layer, without HTTP: operations, tenant confinement, permissions, limits."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from todos import services
from todos.models import Todo

pytestmark = pytest.mark.django_db

READ_ONLY = frozenset({"todos.view_todo"})


def test_crud_cycle(make_principal):
    p = make_principal()
    created = services.create_todo(p, title="  Buy milk ", description="2 litres")
    assert created["title"] == "Buy milk"
    assert created["created_by"] == "alice"
    assert services.get_todo(p, created["id"])["description"] == "2 litres"
    updated = services.update_todo(p, created["id"], completed=True, title="Buy oat milk")
    assert updated["completed"] is True and updated["title"] == "Buy oat milk"
    assert services.list_todos(p)["todos"][0]["id"] == created["id"]
    assert services.delete_todo(p, created["id"]) == created["id"]
    assert not Todo.all_tenants.exists()


def test_update_is_two_statements_and_returns_what_was_stored(
    make_principal, django_assert_num_queries
):
    p = make_principal()
    created = services.create_todo(p, title="draft", description="keep me")
    with django_assert_num_queries(2):  # UPDATE (takes the row lock), then the row
        updated = services.update_todo(p, created["id"], title="final", completed=True)
    assert updated == services.get_todo(p, created["id"])
    assert updated["description"] == "keep me" and updated["created_at"] == created["created_at"]
    assert updated["updated_at"] > created["updated_at"]
    stored = Todo.all_tenants.get()
    assert (stored.title, stored.completed, stored.description) == ("final", True, "keep me")

    other = make_principal(tenant="globex")
    with pytest.raises(services.NotFound):
        services.update_todo(other, created["id"], title="hijack")
    with pytest.raises(services.NotFound):  # not the caller's: "not found" before any validation
        services.update_todo(other, created["id"], title="")
    assert Todo.all_tenants.get().title == "final"


def test_list_filters_completed_and_orders_newest_first(make_principal):
    p = make_principal()
    ids = [services.create_todo(p, title=f"t{i}")["id"] for i in range(3)]
    services.update_todo(p, ids[1], completed=True)
    assert [t["id"] for t in services.list_todos(p)["todos"]] == ids[::-1]
    assert [t["id"] for t in services.list_todos(p, completed=True)["todos"]] == [ids[1]]
    assert [t["id"] for t in services.list_todos(p, completed=False)["todos"]] == [ids[2], ids[0]]


def test_pagination_walks_every_row_exactly_once(make_principal):
    p = make_principal()
    ids = {services.create_todo(p, title=f"t{i}")["id"] for i in range(7)}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = services.list_todos(p, limit=3, cursor=cursor)
        seen += [t["id"] for t in page["todos"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 7 and set(seen) == ids


@pytest.mark.parametrize("completed", [None, True, False])
def test_pagination_breaks_created_at_ties_by_id(make_principal, completed):
    p = make_principal()
    same = timezone.now()
    rows = [
        Todo(tenant_id=p.tenant.id, title=f"t{i}", created_by="x", completed=i % 2 == 0)
        for i in range(9)
    ]
    Todo.all_tenants.bulk_create(rows)
    Todo.all_tenants.update(created_at=same)  # nine rows, one timestamp: only the id orders them
    expected = [
        str(t.pk)
        for t in sorted(rows, key=lambda t: t.pk, reverse=True)
        if completed is None or t.completed is completed
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = services.list_todos(p, completed=completed, limit=2, cursor=cursor)
        seen += [t["id"] for t in page["todos"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected


def test_default_page_size_is_bounded(make_principal):
    p = make_principal()
    Todo.all_tenants.bulk_create(
        Todo(tenant_id=p.tenant.id, title=f"t{i}", created_by="x") for i in range(60)
    )
    page = services.list_todos(p)
    assert len(page["todos"]) == services.DEFAULT_PAGE_SIZE
    assert page["next_cursor"]


@pytest.mark.parametrize("limit", [0, -1, 101, 10_000])
def test_page_size_limits(make_principal, limit):
    with pytest.raises(services.InvalidInput):
        services.list_todos(make_principal(), limit=limit)


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "eyJ4IjoxfQ"])
def test_bad_cursor_is_invalid_input(make_principal, cursor):
    with pytest.raises(services.InvalidInput):
        services.list_todos(make_principal(), cursor=cursor)


def test_tenant_confinement_every_operation(make_principal):
    a = make_principal("tenant-a")
    b = make_principal("tenant-b", subject="mallory")
    todo = services.create_todo(a, title="A's secret")
    for attempt in (
        lambda: services.get_todo(b, todo["id"]),
        lambda: services.update_todo(b, todo["id"], title="pwned"),
        lambda: services.delete_todo(b, todo["id"]),
    ):
        with pytest.raises(services.NotFound) as exc:
            attempt()
        assert "not found" in str(exc.value)
    assert services.list_todos(b) == {"todos": [], "next_cursor": None}
    assert Todo.all_tenants.get().title == "A's secret"


def test_missing_and_malformed_ids_are_not_found(make_principal):
    p = make_principal()
    for bad in (str(uuid.uuid4()), "not-a-uuid", "", "1 OR 1=1", None, 42):
        with pytest.raises(services.NotFound):
            services.get_todo(p, bad)


@pytest.mark.parametrize(
    ("operation", "perm"),
    [
        (lambda p, i: services.create_todo(p, title="x"), "todos.add_todo"),
        (lambda p, i: services.update_todo(p, i, title="x"), "todos.change_todo"),
        (lambda p, i: services.delete_todo(p, i), "todos.delete_todo"),
    ],
)
def test_writes_need_write_permissions(make_principal, operation, perm):
    owner = make_principal()
    todo_id = services.create_todo(owner, title="keep")["id"]
    reader = make_principal(perms=READ_ONLY)
    with pytest.raises(services.PermissionDenied) as exc:
        operation(reader, todo_id)
    assert perm in str(exc.value)
    assert services.get_todo(reader, todo_id)["title"] == "keep"


def test_reads_need_view_permission(make_principal):
    p = make_principal(perms=frozenset({"todos.add_todo"}))
    todo_id = services.create_todo(p, title="write-only")["id"]
    with pytest.raises(services.PermissionDenied):
        services.get_todo(p, todo_id)
    with pytest.raises(services.PermissionDenied):
        services.list_todos(p)


@pytest.mark.parametrize("title", ["", "   ", "x" * 201, "x" * 10_000_000, None, 5])
def test_title_limits(make_principal, title):
    with pytest.raises(services.InvalidInput):
        services.create_todo(make_principal(), title=title)
    assert not Todo.all_tenants.exists()


def test_description_limit_and_update_validation(make_principal):
    p = make_principal()
    with pytest.raises(services.InvalidInput, match="Description is too long"):
        services.create_todo(p, title="ok", description="d" * 5001)
    assert services.create_todo(p, title="ok", description="d" * 5000)["description"]
    todo_id = Todo.all_tenants.get().pk
    with pytest.raises(services.InvalidInput):
        services.update_todo(p, todo_id, title="")
    with pytest.raises(services.InvalidInput):
        services.update_todo(p, todo_id, description="d" * 5001)
    assert Todo.all_tenants.get().title == "ok"
