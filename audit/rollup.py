"""Per-day call counts of sealed rows (:class:`~audit.models.AuditRollup`).

The sealer adds each block's counts in the transaction that writes its seal, and
``audit_prune`` subtracts the counts of the rows it deletes in the transaction that deletes
them, so the rollup always counts exactly the rows with ``id <= last sealed id``. The overview
adds the rows past that id from the table itself (:mod:`audit.overview`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from django.db import connections, router

from audit.models import OUTBOUND_PREFIX, SELF_AUDIT_PREFIXES, AuditEvent, AuditRollup

Key = tuple[date, str, str, str, str, str]
_COLUMNS = ("day", "tenant", "client_id", "tool", "outcome", "kind")


def kind_of(method: str) -> str:
    if method.startswith(SELF_AUDIT_PREFIXES):
        return AuditRollup.Kind.CONFIG
    if method.startswith(OUTBOUND_PREFIX):
        return AuditRollup.Kind.OUTBOUND
    return "call"


def utc_day(value: datetime) -> date:
    return value.astimezone(UTC).date()


def key_of(row: Sequence[Any], pos: Mapping[str, int]) -> Key:
    """The rollup key of a canonical row (``pos``: field name → position in ``row``)."""
    return (
        utc_day(row[pos["created_at"]]),
        row[pos["tenant"]],
        row[pos["client_id"]],
        row[pos["tool"]],
        row[pos["outcome"]],
        kind_of(row[pos["method"]]),
    )


#: PostgreSQL: one statement for a whole block's counts, one array per column.
_UNNEST_TYPES = ("date", "text", "text", "text", "text", "text", "bigint")


def _upsert_sql(using: str, *, arrays: bool) -> str:
    connection = connections[using]
    quote = connection.ops.quote_name
    table = quote(AuditRollup._meta.db_table)
    columns = ", ".join(quote(c) for c in (*_COLUMNS, "calls"))
    conflict = ", ".join(quote(c) for c in _COLUMNS)
    calls = quote("calls")
    if arrays:
        # Fixed type names from _UNNEST_TYPES; the arrays are bound parameters.
        casts = ", ".join(f"%s::{t}[]" for t in _UNNEST_TYPES)
        source = f"SELECT * FROM unnest({casts})"  # noqa: S608
    else:
        source = "VALUES (%s, %s, %s, %s, %s, %s, %s)"
    # Identifiers only from the model's metadata; every value is a bound parameter.
    return (
        f"INSERT INTO {table} ({columns}) {source} "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {calls} = {table}.{calls} + EXCLUDED.{calls}"
    )


def add(counts: Counter[Key], *, using: str | None = None) -> None:
    """Add ``counts`` (a negative count subtracts); rows that reach zero are removed."""
    if not counts:
        return
    using = using or router.db_for_write(AuditRollup)
    connection = connections[using]
    params = [
        [connection.ops.adapt_datefield_value(key[0]), *key[1:], n]
        for key, n in sorted(counts.items())
        if n
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns = [list(column) for column in zip(*params, strict=True)]
            cursor.execute(_upsert_sql(using, arrays=True), columns)
        else:
            cursor.executemany(_upsert_sql(using, arrays=False), params)
    if any(n < 0 for n in counts.values()):
        AuditRollup.objects.using(using).filter(calls__lte=0).delete()


def counts_of_ids(first_id: int, last_id: int, *, using: str | None = None) -> Counter[Key]:
    """The rollup counts of the rows with ``first_id <= id <= last_id``."""
    using = using or router.db_for_read(AuditEvent)
    counts: Counter[Key] = Counter()
    rows = (
        AuditEvent.objects.using(using)
        .filter(id__gte=first_id, id__lte=last_id)
        .order_by()
        .values_list("created_at", "tenant", "client_id", "tool", "outcome", "method")
    )
    # Grouped in Python: the day is a UTC date on every database, and a block is bounded.
    for created_at, tenant, client_id, tool, outcome, method in rows.iterator(chunk_size=5000):
        counts[(utc_day(created_at), tenant, client_id, tool, outcome, kind_of(method))] += 1
    return counts
