"""SQLite: a sync tool waiting on a downstream does not hold the write lock, when it can.

SQLite has one write lock per database. The quickstart opens transactions with ``BEGIN
IMMEDIATE``, so a sync tool's transaction (``mcpauth.runtime.runner``) holds that lock from its
first statement to its commit, and every other call waits meanwhile, read-only ones too (each writes
its audit row). A tool that waits seconds on another system would stall everyone.

:func:`released` wraps each downstream request of a sync client (credential included):

* if the tool's transaction has **not written anything yet** (no row changed since ``BEGIN``, no
  savepoint of its own), the empty transaction is ended for the wait and begun again right
  after, so other calls proceed while it waits. The tool's later writes still commit with its
  audit row; what it read before the call may have changed meanwhile, exactly as under
  PostgreSQL's default isolation (read committed);
* if it **has written**, the lock must stay held (ending the transaction would lose or commit
  its writes): the outbound audit row says ``write_lock_held: true`` and a warning is logged
  once per tool and downstream. Call downstreams before writing, from a ``read_only`` tool
  (no transaction) or from an async tool, or use PostgreSQL, where none of this applies.

Nothing here runs on other databases, or outside a transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper

log = logging.getLogger(__name__)

_CHANGES_AT_BEGIN = "_mcpauth_changes_at_begin"
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _track(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """Execute wrapper: note the connection's change counter when a transaction begins."""
    result = execute(sql, params, many, context)
    if sql.startswith("BEGIN"):
        connection = context["connection"]
        setattr(connection, _CHANGES_AT_BEGIN, connection.connection.total_changes)
    return result


def install_tracker(connection: BaseDatabaseWrapper, **_: Any) -> None:
    """``connection_created``: SQLite connections note where each transaction began."""
    if connection.vendor == "sqlite" and _track not in connection.execute_wrappers:
        connection.execute_wrappers.append(_track)


def _releasable(connection: BaseDatabaseWrapper) -> bool:
    raw = connection.connection
    begun = getattr(connection, _CHANGES_AT_BEGIN, None)
    return (
        begun is not None
        and raw.total_changes == begun
        and not connection.savepoint_ids
        and len(connection.atomic_blocks) == 1
        and not connection.needs_rollback
    )


def _warn(tool: str, downstream: str) -> None:
    with _warned_lock:
        if (tool, downstream) in _warned:
            return
        _warned.add((tool, downstream))
    log.warning(
        "tool %r waited on downstream %r while holding SQLite's write lock (it had already "
        "written in its transaction): every other call waited too. Call downstreams before "
        "writing, from a read_only or async tool, or use PostgreSQL.",
        tool,
        downstream,
    )


@contextmanager
def released(tool: str, downstream: str, using: str = DEFAULT_DB_ALIAS) -> Iterator[bool | None]:
    """Around one downstream request of a sync tool; yields ``write_lock_held``.

    ``None``: not SQLite, or no transaction open (nothing held); ``False``: the empty
    transaction was ended for the block and is begun again after it; ``True``: the lock stays
    held (the transaction has written).
    """
    connection = connections[using]
    raw = connection.connection if connection.vendor == "sqlite" else None
    if raw is None or not connection.in_atomic_block or not raw.in_transaction:
        yield None
        return
    if not _releasable(connection):
        _warn(tool, downstream)
        yield True
        return
    with connection.wrap_database_errors:
        raw.execute("ROLLBACK")  # nothing was written: nothing is lost
    try:
        yield False
    finally:
        mode = getattr(connection, "transaction_mode", None)
        with connection.wrap_database_errors:
            raw.execute(f"BEGIN {mode}" if mode else "BEGIN")
        setattr(connection, _CHANGES_AT_BEGIN, raw.total_changes)
