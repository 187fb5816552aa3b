"""The single writer of audit rows.

:func:`record` inserts one :class:`~audit.models.AuditEvent`. Called outside a transaction it
commits at once (autocommit); called inside ``transaction.atomic()`` it commits or rolls back
with the surrounding work, which is how a todo mutation and its audit row stay together.
The row is written with one ``INSERT … RETURNING id`` whose SQL is built once (the same
statement every time, which psycopg prepares after a few uses on a connection when the
project's ``prepare_threshold`` allows it), not ``Model.objects.create``: this runs on every
MCP request and the ORM's per-call SQL compilation costs more than the insert. Raw tokens are
never accepted: identity comes from the ``Principal`` (``token_id`` is a ``jti`` or
fingerprint), arguments and messages are redacted here, and control characters in identifiers
(``method``, ``tool``, ids) are replaced, so that a name such as ``x\r=HYPERLINK(…)`` is stored
as one harmless line.

``record(..., commit=True)`` is for the last statement of a transaction: on PostgreSQL, inside
the outermost ``atomic()`` block with no savepoint open, the row's ``INSERT`` and the
transaction's ``COMMIT`` go to the database as one query (the row's values bound client-side),
one round trip and one wake-up instead of two (libpq's pipeline mode saves no wake-up: PostgreSQL
answers the ``INSERT`` before the ``COMMIT``'s flush); the
block's own commit then finds nothing left to do (``on_commit`` callbacks still run after it).
When the ``COMMIT`` fails (a deferred constraint of the work before the row), nothing of the
transaction was kept and :class:`CommitFailed` carries the database's error; when the
``INSERT`` fails the transaction is left aborted for the block to roll back, as without
``commit``. Anywhere else ``commit`` changes nothing.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from django.db import DatabaseError, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from audit.models import AuditEvent, Outcome
from audit.redaction import identifier, redact, scrub_text


class CommitFailed(Exception):
    """The row and the ``COMMIT`` went together and the ``COMMIT`` failed: the transaction,
    the row with it, was rolled back by the database. ``error`` is what the database said."""

    def __init__(self, error: DatabaseError) -> None:
        super().__init__(str(error))
        self.error = error


class _Tenant(Protocol):
    @property
    def external_id(self) -> str: ...


class Caller(Protocol):
    """What a row takes from the caller (``mcpauth``'s ``Principal`` is one)."""

    @property
    def client_id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def tenant(self) -> _Tenant: ...
    @property
    def token_id(self) -> str: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def issuer(self) -> str: ...


def record(
    *,
    outcome: Outcome | str,
    status: int,
    request_id: str,
    method: str = "",
    tool: str = "",
    principal: Caller | None = None,
    client_id: str = "",
    subject: str = "",
    tenant: str = "",
    token_id: str = "",
    scopes: str = "",
    error_code: str = "",
    error_message: str = "",
    duration_ms: float = 0.0,
    client_ip: str | None = None,
    user_agent: str = "",
    arguments: Any = None,
    actor: str = "",
    trace_id: str = "",
    issuer: str = "",
    commit: bool = False,
) -> int:
    """Insert one audit row; return its id.

    ``issuer``: the issuer of the caller's verified token (taken from ``principal`` when given);
    for a configuration change, the issuer of the tenant, binding or policy it concerns.
    ``commit``: the row is the transaction's last statement (see the module docstring).
    """
    if principal is not None:
        issuer = principal.issuer
        client_id = principal.client_id
        subject = principal.subject
        tenant = principal.tenant.external_id
        token_id = principal.token_id
        scopes = " ".join(sorted(principal.scopes))
    return _insert(
        commit,
        created_at=timezone.now(),
        outcome=str(outcome),
        status=status,
        request_id=_ident(request_id, 64),
        method=_ident(method, 64),
        tool=_ident(tool, 100),
        client_id=_ident(client_id, 255),
        subject=_ident(subject, 255),
        tenant=_ident(tenant, 255),
        token_id=_ident(token_id, 160),
        scopes=_ident(scopes, 1000),
        error_code=_ident(error_code, 64),
        error_message=scrub_text(error_message)[:500],
        duration_ms=round(duration_ms, 3),
        client_ip=client_ip or None,
        user_agent=scrub_text(user_agent)[:300],
        arguments=redact(arguments) if arguments is not None else {},
        actor=_ident(actor, 255),
        trace_id=_ident(trace_id, 32),
        issuer=_ident(issuer, 255),
    )


def _ident(value: str, limit: int) -> str:
    """Cut to the column's size, control characters (NUL, CR, LF…) replaced by U+FFFD."""
    return identifier(value[:limit])


_FIELDS = [f for f in AuditEvent._meta.concrete_fields if not f.primary_key]
#: The fields whose values need the field's own preparation (database-specific adaptation of
#: datetimes, IP addresses and JSON); every other value :func:`record` passes is already a
#: plain ``str``/``int``/``float``, which the driver binds as is.
_PREPARED = frozenset({"created_at", "client_ip", "arguments"})
_SQL: dict[str, str] = {}


@functools.cache
def _psycopg3() -> bool:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)


def _ends_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether the row's ``INSERT`` may carry the ``COMMIT`` of ``connection``'s transaction:
    PostgreSQL through psycopg 3 (whose client-side binding it uses), inside the outermost
    ``atomic()`` block, which commits on exit, with no savepoint open."""
    return (
        connection.vendor == "postgresql"
        and _psycopg3()
        and connection.in_atomic_block
        and connection.commit_on_exit
        and not connection.needs_rollback
        and not connection.savepoint_ids
        and len(connection.atomic_blocks) == 1
    )


def _insert(commit: bool, **values: Any) -> int:
    using = router.db_for_write(AuditEvent)
    connection = connections[using]
    sql = _SQL.get(using)
    if sql is None:
        quote = connection.ops.quote_name
        # Only identifiers from the model's own metadata; every value is a bound parameter.
        sql = _SQL[using] = "INSERT INTO {} ({}) VALUES ({}) RETURNING {}".format(  # noqa: S608
            quote(AuditEvent._meta.db_table),
            ", ".join(quote(str(f.column)) for f in _FIELDS),
            ", ".join(["%s"] * len(_FIELDS)),
            quote(str(AuditEvent._meta.pk.column)),
        )
    params = [
        f.get_db_prep_save(values[f.attname], connection=connection)
        if f.attname in _PREPARED
        else values[f.attname]
        for f in _FIELDS
    ]
    if not (commit and _ends_transaction(connection)):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            (pk,) = cursor.fetchone()
        return int(pk)
    from psycopg import ClientCursor
    from psycopg.pq import TransactionStatus

    raw = connection.connection
    # The values bound client-side (psycopg's quoting, as Django's default cursor does it): a
    # query without parameters goes as one simple query, which may hold two statements.
    with ClientCursor(raw) as client:
        statement = client.mogrify(sql, params)
    with connection.cursor() as cursor:
        try:
            cursor.execute(f"{statement}; COMMIT")
        except DatabaseError as exc:
            # A failed INSERT leaves the transaction aborted (the COMMIT after it did not run);
            # a failed COMMIT has ended it: the session is idle again.
            if raw.info.transaction_status == TransactionStatus.IDLE:
                raise CommitFailed(exc) from exc
            raise
        (pk,) = cursor.fetchone()
    return int(pk)
