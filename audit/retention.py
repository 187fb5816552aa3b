"""Retention: the one path that removes audit rows, whole sealed blocks at a time.

A block goes when its newest row is older than the cutoff, and only from the start of the chain
(the oldest blocks first, never the newest seal), so what is kept is still one unbroken chain:
``audit_verify`` checks it from the first kept seal. Each block is deleted in its own
transaction: its rows, its seal and its rollup counts. On PostgreSQL that transaction, and only
it, runs ``SET LOCAL audit.retention = 'on'``, which the append-only trigger (migration 0003)
lets ``DELETE`` through for; ``UPDATE`` is refused always.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from django.db import connections, router, transaction

from audit import rollup
from audit.models import AuditEvent, AuditSeal


@contextmanager
def retention_transaction(using: str) -> Iterator[None]:
    """A transaction in which the database lets audit rows and seals be deleted.

    The setting is turned off again before the block ends: inside an outer transaction (a
    savepoint), ``SET LOCAL`` would otherwise last until that outer transaction ends. On an
    error the savepoint's rollback restores it anyway.
    """
    with transaction.atomic(using=using):
        connection = connections[using]
        postgresql = connection.vendor == "postgresql"
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL audit.retention = 'on'")
        yield
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL audit.retention = 'off'")


def prunable_blocks(cutoff: datetime, *, using: str | None = None) -> list[AuditSeal]:
    """The oldest seals whose rows are all older than ``cutoff``, never the newest seal."""
    using = using or router.db_for_read(AuditSeal)
    seals = list(
        AuditSeal.objects.using(using)
        .order_by("first_id")
        .only("id", "first_id", "last_id", "row_count", "last_at")
    )
    blocks: list[AuditSeal] = []
    for seal in seals[:-1]:
        if seal.last_at is None or seal.last_at >= cutoff:
            break
        blocks.append(seal)
    return blocks


@dataclass
class PruneReport:
    blocks: int = 0
    rows: int = 0
    first_id: int | None = None
    last_id: int | None = None


def _delete_ids(using: str, table: str, first_id: int, last_id: int) -> int:
    connection = connections[using]
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        # The table name comes from the model's metadata; the bounds are bound parameters.
        cursor.execute(
            f"DELETE FROM {quote(table)} WHERE {quote('id')} >= %s AND {quote('id')} <= %s",  # noqa: S608
            [first_id, last_id],
        )
        return int(cursor.rowcount)


def prune_block(
    seal: AuditSeal,
    *,
    batch_size: int,
    using: str | None = None,
    audit: Callable[[AuditSeal, int], None] | None = None,
) -> int:
    """Delete one sealed block (rows, seal, rollup counts) in one transaction; rows deleted.

    ``audit(seal, rows)`` writes the block's ``audit/prune`` row in that same transaction, so a
    block is never gone without its record (``audit_verify`` relies on it).
    """
    using = using or router.db_for_write(AuditEvent)
    with retention_transaction(using):
        counts = rollup.counts_of_ids(seal.first_id, seal.last_id, using=using)
        deleted = 0
        low = seal.first_id
        while low <= seal.last_id:
            high = min(low + batch_size - 1, seal.last_id)
            deleted += _delete_ids(using, AuditEvent._meta.db_table, low, high)
            low = high + 1
        _delete_ids(using, AuditSeal._meta.db_table, int(seal.pk), int(seal.pk))
        # Not ``-counts``: a Counter's unary minus keeps only the negative entries.
        rollup.add(Counter({key: -n for key, n in counts.items()}), using=using)
        if audit is not None:
            audit(seal, deleted)
    return deleted


def prune(
    cutoff: datetime,
    *,
    batch_size: int = 5000,
    using: str | None = None,
    progress: Callable[[PruneReport], None] | None = None,
    audit: Callable[[AuditSeal, int], None] | None = None,
) -> PruneReport:
    """Delete every prunable block (see :func:`prunable_blocks`), oldest first."""
    report = PruneReport()
    for seal in prunable_blocks(cutoff, using=using):
        report.rows += prune_block(seal, batch_size=batch_size, using=using, audit=audit)
        report.blocks += 1
        report.first_id = seal.first_id if report.first_id is None else report.first_id
        report.last_id = seal.last_id
        if progress is not None:
            progress(report)
    return report
