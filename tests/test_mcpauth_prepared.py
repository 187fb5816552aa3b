"""Prepared querysets (``mcpauth.prepared``): ORM-built statements, compiled once, run often."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from mcpauth.exceptions import NoPrincipal
from mcpauth.identity.tokens import Principal, TenantRef
from mcpauth.models import Tenant
from mcpauth.prepared import PreparedDelete, PreparedQuery
from todos.models import Todo

pytestmark = pytest.mark.django_db

FIELDS = ("id", "title", "completed", "created_at")
ROW = Todo.objects.prepare(lambda todos, p: todos.filter(pk=p.pk).values(*FIELDS).order_by()[:1])
RECENT = Todo.objects.prepare(
    lambda todos, p: (
        todos.filter(created_at__lte=p.created_at, completed=p.completed)
        .order_by("-created_at")
        .values("title")[:10]
    )
)
RENAME = Todo.objects.prepare_update(lambda todos, p: todos.filter(pk=p.pk), ["title"])
DELETE = Todo.objects.prepare_delete(lambda todos, p: todos.filter(pk=p.pk))


def principal(external_id: str) -> Principal:
    tenant, _ = Tenant.objects.get_or_create(external_id=external_id)
    return Principal("c", "s", TenantRef(tenant.pk, external_id), frozenset(), frozenset(), "t")


def test_rows_read_like_values_and_stay_in_the_tenant() -> None:
    acme, globex = principal("acme"), principal("globex")
    todo = Todo.objects.for_principal(acme).create(title="mine", created_by="s")
    expected = Todo.all_tenants.filter(pk=todo.pk).values(*FIELDS).get()
    assert ROW.first(acme, pk=todo.pk) == expected  # UUID, bool and aware datetime converted
    assert ROW.first(acme, pk=str(todo.pk)) == expected  # prepared by the field, as the ORM does
    assert ROW.first(globex, pk=todo.pk) is None
    assert ROW.first(acme, pk=uuid.uuid4()) is None


def test_parameters_named_like_fields_are_prepared_by_the_field() -> None:
    acme = principal("acme")
    confined = Todo.objects.for_principal(acme)
    old = confined.create(title="old", created_by="s")
    Todo.all_tenants.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    confined.create(title="new", created_by="s", completed=True)
    yesterday = timezone.now() - timedelta(days=1)
    assert RECENT.rows(acme, created_at=yesterday, completed=False) == [{"title": "old"}]
    assert RECENT.rows(acme, created_at=timezone.now(), completed=True) == [{"title": "new"}]


def test_update_and_delete_count_rows_and_never_cross_tenants() -> None:
    acme, globex = principal("acme"), principal("globex")
    todo = Todo.objects.for_principal(acme).create(title="before", created_by="s")
    assert RENAME.run(globex, pk=todo.pk, title="hijacked") == 0
    assert RENAME.run(acme, pk=todo.pk, title="after") == 1
    assert Todo.all_tenants.get().title == "after"
    assert DELETE.run(globex, pk=todo.pk) == 0
    assert DELETE.run(acme, pk=todo.pk) == 1
    assert not Todo.all_tenants.exists()


def test_compiled_once_then_one_query_per_run() -> None:
    acme = principal("acme")
    todo = Todo.objects.for_principal(acme).create(title="x", created_by="s")
    query = Todo.objects.prepare(lambda todos, p: todos.filter(pk=p.pk).values("title")[:1])
    query.first(acme, pk=todo.pk)
    compiled = query.prepared.compiled(connection.alias)
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(3):
            assert query.first(acme, pk=todo.pk) == {"title": "x"}
    assert [q["sql"] for q in ctx.captured_queries] == [ctx.captured_queries[0]["sql"]] * 3
    assert query.prepared.compiled(connection.alias) is compiled


def test_refusals() -> None:
    acme = principal("acme")
    with pytest.raises(NoPrincipal):
        ROW.first(None, pk=uuid.uuid4())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing value"):
        ROW.first(acme)
    rows_not_values = Todo.objects.prepare(lambda todos, p: todos.filter(pk=p.pk))
    with pytest.raises(TypeError, match="values"):
        rows_not_values.first(acme, pk=uuid.uuid4())
    tenants = PreparedDelete(Tenant, lambda p: Tenant.objects.filter(pk=p.pk))
    with pytest.raises(TypeError, match="cascades"):
        tenants.run(pk=1)  # a tenant's todos would have to go too: not a raw delete
    plain = PreparedQuery(Tenant, lambda p: Tenant.objects.filter(pk=p.pk).values("external_id"))
    assert plain.rows(pk=acme.tenant.id) == [{"external_id": "acme"}]


INSERT = Todo.objects.prepare_insert()


def test_insert_fills_defaults_and_timestamps_like_save() -> None:
    acme = principal("acme")
    row = INSERT.insert(acme, title="new", description="", created_by="s")
    stored = Todo.all_tenants.get()
    assert (stored.pk, stored.tenant_id, stored.title, stored.completed) == (
        row["id"],
        acme.tenant.id,
        "new",
        False,
    )
    assert stored.created_at == row["created_at"] == row["updated_at"]
    assert timezone.is_aware(stored.created_at)
    with pytest.raises(NoPrincipal):
        INSERT.insert(None, title="x", description="", created_by="s")  # type: ignore[arg-type]


def test_insert_is_refused_for_models_with_save_signals() -> None:
    from mcpauth.prepared import PreparedInsert

    with pytest.raises(TypeError, match="save signals"):
        PreparedInsert(Tenant)  # tenancy clears its cache on save
