"""Every outbound call in the audit trail, linked to the call that made it.

An outbound call is one ``AuditEvent`` row (written through ``audit.recorder.record``):

* ``method`` ``outbound/<downstream>``, ``request_id`` and ``tool`` those of the MCP call that
  made it (the tool call's admin page lists its outbound rows), the caller's identity;
* ``status`` the downstream's HTTP status (0 when none came: refused, no credential, timeout),
  ``duration_ms`` until the response's headers (or the failure), ``outcome`` what happened to
  the outbound call itself (``ok`` below 400, ``denied`` for 401/403 and for refusals,
  ``rate_limited`` for 429, ``invalid_request`` for other 4xx, ``server_error`` for 5xx and
  transport failures), ``error_code``/``error_message`` why;
* ``arguments``: ``downstream``, ``http_method``, ``host`` and ``path`` (never the query string
  or the body), ``auth`` (the credential kind, never the credential), ``obtained`` (where the
  credential came from: ``stored``, ``cache``, ``issuer``, ``caller``), ``at_ms`` (when it
  started, in ms after the MCP call started) and, on SQLite, ``write_lock_held``.

Rows are kept on the call (:class:`OutboundLog`) while it runs and written just before the
call's own row (:func:`flush`, from ``record_call``), in the same transaction: a sync tool's
outbound rows commit with its writes and its row, and if that transaction rolls back they are
written again with the failure row, since the outbound calls did happen. Anything still
pending when the request ends is written then; a call made after the call's row was written is
written at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import router, transaction

from audit.models import AuditEvent, Outcome
from audit.recorder import record

if TYPE_CHECKING:
    from mcpauth.runtime.context import CallContext

log = logging.getLogger(__name__)

#: Outbound rows kept per call; beyond this, one summary row counts the rest.
MAX_PENDING = 1000


def outcome_for_status(status: int) -> str:
    if status in (401, 403):
        return Outcome.DENIED
    if status == 429:
        return Outcome.RATE_LIMITED
    if status >= 500:
        return Outcome.SERVER_ERROR
    if status >= 400:
        return Outcome.INVALID_REQUEST
    return Outcome.OK


@dataclass
class Outbound:
    downstream: str
    auth: str
    http_method: str
    host: str
    path: str
    at_ms: float
    status: int = 0
    outcome: str = Outcome.OK
    error_code: str = ""
    error_message: str = ""
    duration_ms: float = 0.0
    obtained: str = ""
    write_lock_held: bool | None = None

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "downstream": self.downstream,
            "http_method": self.http_method,
            "host": self.host,
            "path": self.path,
            "auth": self.auth,
            "obtained": self.obtained,
            "at_ms": round(self.at_ms, 3),
        }
        if self.write_lock_held is not None:
            args["write_lock_held"] = self.write_lock_held
        return args


@dataclass
class OutboundLog:
    """A call's outbound rows not yet written (``CallContext.outbound``)."""

    pending: list[Outbound] = field(default_factory=list)
    #: Outbound calls beyond ``MAX_PENDING``, counted in one summary row.
    dropped: int = 0


def _log(call: CallContext) -> OutboundLog:
    if call.outbound is None:
        call.outbound = OutboundLog()
    log_: OutboundLog = call.outbound
    return log_


def add(call: CallContext, entry: Outbound) -> bool:
    """Keep ``entry`` for the call's audit; True when it must be written now (:func:`flush`):
    the call's own row is already written."""
    pending = _log(call)
    if len(pending.pending) >= MAX_PENDING:
        pending.dropped += 1
    else:
        pending.pending.append(entry)
    return call.recorded


def _write(call: CallContext, entry: Outbound) -> None:
    record(
        outcome=entry.outcome,
        status=entry.status,
        request_id=call.request_id,
        method=f"outbound/{entry.downstream}",
        tool=call.tool,
        principal=call.principal,
        error_code=entry.error_code,
        error_message=entry.error_message,
        duration_ms=entry.duration_ms,
        arguments=entry.arguments(),
        trace_id=call.trace_id,
    )


def flush(call: CallContext) -> None:
    """Write the call's pending outbound rows (sync; in the caller's transaction, if any).

    They leave the pending list once that transaction commits (at once outside one), so a
    rolled-back attempt leaves them for the next.
    """
    pending = call.outbound
    if pending is None or not (pending.pending or pending.dropped):
        return
    batch = list(pending.pending)
    dropped = pending.dropped
    for entry in batch:
        _write(call, entry)
    if dropped:
        record(
            outcome=Outcome.OK,
            status=0,
            request_id=call.request_id,
            method="outbound/*",
            tool=call.tool,
            principal=call.principal,
            error_code="outbound_summary",
            error_message=f"{dropped} more outbound calls of this call were not recorded one "
            "by one.",
            trace_id=call.trace_id,
        )

    def forget() -> None:
        written = {id(e) for e in batch}
        pending.pending[:] = [e for e in pending.pending if id(e) not in written]
        pending.dropped -= dropped

    transaction.on_commit(forget, using=router.db_for_write(AuditEvent))


def flush_remaining(call: CallContext) -> None:
    """At the end of the request: whatever is still pending (sync; never raises)."""
    try:
        if call.outbound is not None and (call.outbound.pending or call.outbound.dropped):
            call.refresh_db()
            flush(call)
    except Exception:
        log.exception("could not record outbound calls of request %s", call.request_id)
