"""Which audit rows are settled: no row with a lower id can still appear.

Ids come from a sequence and are assigned at ``INSERT``, before the transaction commits. Two
writers can therefore commit out of order: row 101 is visible while row 100, inserted a moment
earlier, is still in flight (a tool's transaction commits its audit row with its writes). A
reader that sealed or streamed "everything up to 101" would later meet row 100 inside a range it
had already closed.

The sealer (:mod:`audit.sealing`) and ``audit_export --follow`` therefore only go up to the
*settled horizon*: the highest id such that every row with an id at or below it has either
committed or will never exist. It is found without any lock:

1. ``cutoff`` = now - ``AUDIT_SETTLE_SECONDS``. :func:`audit.recorder.record` sets
   ``created_at`` immediately before its ``INSERT``, so a row with ``created_at < cutoff`` got its
   id at least that long ago.
2. On PostgreSQL, ``cutoff`` moves back to the start of the oldest transaction in this database
   that has written something and is still open (``pg_stat_activity``): such a transaction may
   hold an uncommitted audit row, whose id is higher than those of all rows created before it
   began, but possibly lower than those of rows created after.
3. The horizon is the id just below the first visible row (in id order, past ``after``) whose
   ``created_at`` is at or after ``cutoff``; if there is none, the highest visible id.

A row held uncommitted longer than the settle time by a transaction that never wrote anything
else first cannot exist: its ``INSERT`` is a write. What remains is clock skew between the
application servers and the database (keep them within ``AUDIT_SETTLE_SECONDS``). A row that
still commits into a sealed range is reported by ``audit_verify`` as inserted, which is what it
is: it appeared after its block was sealed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connections, router
from django.db.models import Max, Min
from django.utils import timezone

from audit.conf import get_settings
from audit.models import AuditEvent

_OLDEST_WRITER_SQL = (
    "SELECT min(xact_start) FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
)


def oldest_open_writer(using: str) -> datetime | None:
    """The start of the oldest open writing transaction (PostgreSQL; ``None`` elsewhere)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(_OLDEST_WRITER_SQL)
        row = cursor.fetchone()
    return row[0] if row else None


def settle_cutoff(*, now: datetime | None = None, using: str | None = None) -> datetime:
    """Rows created before this instant are settled (steps 1 and 2 above)."""
    using = using or router.db_for_read(AuditEvent)
    cutoff = (now or timezone.now()) - timedelta(seconds=get_settings().settle_seconds)
    writer = oldest_open_writer(using)
    if writer is not None and writer < cutoff:
        cutoff = writer
    return cutoff


def settled_horizon(after: int, *, now: datetime | None = None, using: str | None = None) -> int:
    """The highest settled id (``after`` when nothing past it is settled yet)."""
    using = using or router.db_for_read(AuditEvent)
    cutoff = settle_cutoff(now=now, using=using)
    rows = AuditEvent.objects.using(using).filter(id__gt=after)
    # MIN over the recent rows (few, through the time index), not a walk along the ids.
    first_recent = rows.filter(created_at__gte=cutoff).aggregate(m=Min("id"))["m"]
    if first_recent is not None:
        return max(after, first_recent - 1)
    highest = rows.aggregate(m=Max("id"))["m"]
    return after if highest is None else int(highest)
