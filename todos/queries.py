"""The SQL behind the todo services: one statement per operation, built once per shape.

Every MCP call runs one of these, so they skip the ORM's per-call query compilation and model
instantiation, which cost more than the query itself (see ``bench/README.md``):

* reads are one ``SELECT``; writes are one ``INSERT``/``UPDATE``/``DELETE … RETURNING``
  (PostgreSQL, and SQLite ≥ 3.35), so a write takes its row lock, writes and reads back in one
  round trip;
* statement text depends only on the query's shape (which columns change, which filters
  apply), so it is built once per shape and database alias, from the model's own metadata;
* every value is a bound parameter, prepared by its field's ``get_db_prep_save``/
  ``get_db_prep_value``, and every result goes through the converters the ORM itself applies
  (``connection.ops.get_db_converters`` and the field's own), so rows read the same on every
  backend as ``Todo.objects.values(*FIELDS)`` would.

Nothing here checks permissions or validates input: :mod:`todos.services` does, and every
function takes the caller's ``tenant_id`` so that no query can leave the tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field

from todos.models import Todo

#: the columns every query returns, in this order
FIELDS = ("id", "title", "description", "completed", "created_by", "created_at", "updated_at")

_META = Todo._meta
_FIELD: dict[str, Field[Any, Any]] = {f.name: f for f in _META.concrete_fields}
_SQL: dict[tuple[str, str, tuple[Any, ...]], str] = {}


Builder = Callable[[Callable[[str], str], str, str], str]
Params = Callable[[BaseDatabaseWrapper], list[Any]]


def _run(kind: str, shape: tuple[Any, ...], build: Builder, params: Params) -> _Result:
    """Execute the statement for ``(kind, shape)``; ``build(col, table, returning)`` writes its
    SQL the first time, ``params(connection)`` gives the bound values every time."""
    using = router.db_for_write(Todo)
    connection = connections[using]
    key = (using, kind, shape)
    sql = _SQL.get(key)
    if sql is None:
        quote = connection.ops.quote_name

        def col(name: str) -> str:
            return quote(str(_FIELD[name].column))

        # Only identifiers from the model's own metadata; every value is a bound parameter.
        sql = _SQL[key] = build(col, quote(_META.db_table), ", ".join(col(n) for n in FIELDS))
    with connection.cursor() as cursor:
        cursor.execute(sql, params(connection))
        return _Result(connection, cursor.fetchall())


class _Result:
    def __init__(self, connection: BaseDatabaseWrapper, raw: list[tuple[Any, ...]]) -> None:
        self.connection = connection
        self.raw = raw

    def rows(self) -> list[dict[str, Any]]:
        """The returned rows as ``FIELDS`` dicts, through the ORM's converters."""
        return [self._convert(raw) for raw in self.raw]

    def first(self) -> dict[str, Any] | None:
        return self._convert(self.raw[0]) if self.raw else None

    def _convert(self, raw: tuple[Any, ...]) -> dict[str, Any]:
        connection = self.connection
        row: dict[str, Any] = {}
        for name, value in zip(FIELDS, raw, strict=True):
            col = _FIELD[name].get_col(_META.db_table)
            for convert in connection.ops.get_db_converters(col) + col.get_db_converters(
                connection
            ):
                value = convert(value, col, connection)
            row[name] = value
        return row


def _prep(connection: BaseDatabaseWrapper, name: str, value: Any) -> Any:
    return _FIELD[name].get_db_prep_save(value, connection=connection)


def _where_tenant_and_id(col: Callable[[str], str]) -> str:
    return f"WHERE {col('tenant')} = %s AND {col('id')} = %s"


def fetch_one(tenant_id: int, pk: uuid.UUID) -> dict[str, Any] | None:
    return _run(
        "get",
        (),
        lambda col, table, cols: f"SELECT {cols} FROM {table} {_where_tenant_and_id(col)}",  # noqa: S608
        lambda connection: [tenant_id, _prep(connection, "id", pk)],
    ).first()


def fetch_page(
    tenant_id: int,
    *,
    completed: bool | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows, newest first, strictly after the ``(created_at, id)`` keyset ``after``.

    The order and the keyset comparison match the ``(tenant, [completed,] -created_at, -id)``
    indexes, so each page is an index range scan however deep the cursor.
    """

    def build(col: Callable[[str], str], table: str, cols: str) -> str:
        where = [f"{col('tenant')} = %s"]
        if completed is not None:
            where.append(f"{col('completed')} = %s")
        if after is not None:
            where.append(f"({col('created_at')}, {col('id')}) < (%s, %s)")
        return (
            f"SELECT {cols} FROM {table} WHERE {' AND '.join(where)} "  # noqa: S608
            f"ORDER BY {col('created_at')} DESC, {col('id')} DESC LIMIT %s"
        )

    def params(connection: BaseDatabaseWrapper) -> list[Any]:
        values: list[Any] = [tenant_id]
        if completed is not None:
            values.append(_prep(connection, "completed", completed))
        if after is not None:
            values += [_prep(connection, "created_at", after[0]), _prep(connection, "id", after[1])]
        return [*values, limit]

    return _run("page", (completed is None, after is None), build, params).rows()


def insert(values: dict[str, Any]) -> dict[str, Any]:
    """Insert a todo from ``values`` and return it; ``id`` and ``completed`` take the model's
    defaults unless given."""
    values = {n: _FIELD[n].get_default() for n in ("id", "completed")} | values
    names = tuple(values)

    def build(col: Callable[[str], str], table: str, cols: str) -> str:
        return (
            f"INSERT INTO {table} ({', '.join(col(n) for n in names)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(names))}) RETURNING {cols}"
        )

    row = _run(
        "insert",
        names,
        build,
        lambda connection: [_prep(connection, n, v) for n, v in values.items()],
    ).first()
    assert row is not None  # INSERT … RETURNING always returns the row
    return row


def update(tenant_id: int, pk: uuid.UUID, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply ``changes`` to the tenant's todo ``pk``; its new row, or ``None`` if not found."""
    names = tuple(changes)

    def build(col: Callable[[str], str], table: str, cols: str) -> str:
        sets = ", ".join(f"{col(n)} = %s" for n in names)
        return f"UPDATE {table} SET {sets} {_where_tenant_and_id(col)} RETURNING {cols}"  # noqa: S608

    def params(connection: BaseDatabaseWrapper) -> list[Any]:
        values = [_prep(connection, n, v) for n, v in changes.items()]
        return [*values, tenant_id, _prep(connection, "id", pk)]

    return _run("update", names, build, params).first()


def delete(tenant_id: int, pk: uuid.UUID) -> bool:
    """Delete the tenant's todo ``pk``; whether it existed."""
    return bool(
        _run(
            "delete",
            (),
            lambda col, table, cols: (
                f"DELETE FROM {table} {_where_tenant_and_id(col)} RETURNING {col('id')}"  # noqa: S608
            ),
            lambda connection: [tenant_id, _prep(connection, "id", pk)],
        ).raw
    )
