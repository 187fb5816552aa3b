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


def _connection() -> tuple[str, BaseDatabaseWrapper]:
    using = router.db_for_write(Todo)
    return using, connections[using]


def _statement(
    using: str,
    connection: BaseDatabaseWrapper,
    kind: str,
    shape: tuple[Any, ...],
    build: Callable[[Callable[[str], str], str, str], str],
) -> str:
    """The cached SQL for ``(kind, shape)``; ``build(col, table, returning)`` writes it once."""
    key = (using, kind, shape)
    sql = _SQL.get(key)
    if sql is None:
        quote = connection.ops.quote_name

        def col(name: str) -> str:
            return quote(str(_FIELD[name].column))

        # Only identifiers from the model's own metadata; every value is a bound parameter.
        sql = _SQL[key] = build(col, quote(_META.db_table), ", ".join(col(n) for n in FIELDS))
    return sql


def _prep(connection: BaseDatabaseWrapper, name: str, value: Any) -> Any:
    return _FIELD[name].get_db_prep_save(value, connection=connection)


def _row(connection: BaseDatabaseWrapper, raw: tuple[Any, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in zip(FIELDS, raw, strict=True):
        col = _FIELD[name].get_col(_META.db_table)
        for convert in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
            value = convert(value, col, connection)
        row[name] = value
    return row


def fetch_one(tenant_id: int, pk: uuid.UUID) -> dict[str, Any] | None:
    using, connection = _connection()
    sql = _statement(
        using,
        connection,
        "get",
        (),
        lambda col, table, cols: (
            f"SELECT {cols} FROM {table} WHERE {col('tenant')} = %s AND {col('id')} = %s"  # noqa: S608
        ),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_id, _prep(connection, "id", pk)])
        raw = cursor.fetchone()
    return None if raw is None else _row(connection, raw)


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
    using, connection = _connection()

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

    sql = _statement(using, connection, "page", (completed is None, after is None), build)
    params: list[Any] = [tenant_id]
    if completed is not None:
        params.append(_prep(connection, "completed", completed))
    if after is not None:
        params += [_prep(connection, "created_at", after[0]), _prep(connection, "id", after[1])]
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [_row(connection, raw) for raw in cursor.fetchall()]


def insert(values: dict[str, Any]) -> dict[str, Any]:
    """Insert a todo from ``values`` and return it; ``id`` and ``completed`` take the model's
    defaults unless given."""
    using, connection = _connection()
    values = {n: _FIELD[n].get_default() for n in ("id", "completed")} | values
    names = tuple(values)

    def build(col: Callable[[str], str], table: str, cols: str) -> str:
        return (
            f"INSERT INTO {table} ({', '.join(col(n) for n in names)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(names))}) RETURNING {cols}"
        )

    sql = _statement(using, connection, "insert", names, build)
    with connection.cursor() as cursor:
        cursor.execute(sql, [_prep(connection, n, v) for n, v in values.items()])
        raw = cursor.fetchone()
    assert raw is not None  # INSERT … RETURNING always returns the row
    return _row(connection, raw)


def update(tenant_id: int, pk: uuid.UUID, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply ``changes`` to the tenant's todo ``pk``; its new row, or ``None`` if not found."""
    using, connection = _connection()
    names = tuple(changes)

    def build(col: Callable[[str], str], table: str, cols: str) -> str:
        sets = ", ".join(f"{col(n)} = %s" for n in names)
        return (
            f"UPDATE {table} SET {sets} "  # noqa: S608
            f"WHERE {col('tenant')} = %s AND {col('id')} = %s RETURNING {cols}"
        )

    sql = _statement(using, connection, "update", names, build)
    params = [_prep(connection, n, v) for n, v in changes.items()]
    params += [tenant_id, _prep(connection, "id", pk)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        raw = cursor.fetchone()
    return None if raw is None else _row(connection, raw)


def delete(tenant_id: int, pk: uuid.UUID) -> bool:
    """Delete the tenant's todo ``pk``; whether it existed."""
    using, connection = _connection()
    sql = _statement(
        using,
        connection,
        "delete",
        (),
        lambda col, table, cols: (
            f"DELETE FROM {table} WHERE {col('tenant')} = %s AND {col('id')} = %s "  # noqa: S608
            f"RETURNING {col('id')}"
        ),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_id, _prep(connection, "id", pk)])
        return cursor.fetchone() is not None
