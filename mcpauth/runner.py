"""How one governed tool runs: FastMCP's own runner, plus a transaction and the audit row.

FastMCP owns execution. It validates the arguments, injects ``Context``, runs a sync tool in its
worker pool, converts the result (``Tool.convert_result``, which also builds the structured
content its output schema describes) and puts it on the wire for the negotiated protocol
version. Governance adds one thing, a wrapper around the tool *function* with the function's own
signature (``functools.wraps``), so FastMCP derives exactly the schemas it would for the bare
function:

* **Sync tools** run in FastMCP's worker thread. The wrapper opens ``transaction.atomic()``
  there, calls the function, converts its result with the tool's own ``convert_result`` and
  writes the ``ok`` audit row, then commits: the tool's writes, the serialization of its result
  and its audit row commit together, and if any of them fails all of it rolls back. FastMCP then
  passes the converted :class:`~fastmcp.tools.base.ToolResult` through unchanged. A
  ``read_only`` tool runs without the transaction (it has nothing to roll back).
* **Async tools** run on the event loop. Django 5.2 has no async transactions, so each of their
  ORM calls commits on its own; the wrapper converts the result, then writes the audit row (in a
  worker thread) before the reply. A result that fails to serialize still gives a
  ``server_error`` row and reply, but writes the tool already made stay.

What the body raises decides the audit outcome and the reply, identically on every path:

* :class:`~mcpauth.exceptions.ServiceError` → its ``outcome`` (``tool_error``, ``denied`` ...)
  and its message, as an MCP tool error;
* FastMCP's ``ToolError`` → ``tool_error`` and its message;
* anything else → ``server_error``; the exception propagates to FastMCP, which masks it
  (``mask_error_details``) into the same generic tool error plain FastMCP would send;
* the audit row cannot be written → everything rolls back and the call is answered 500.

Invalid arguments never reach the wrapper: FastMCP refuses them first, and
:class:`mcpauth.server.Governance` records those.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, transaction
from django.http import Http404
from fastmcp.exceptions import ToolError

from audit.models import Outcome
from mcpauth import rls
from mcpauth.context import CallContext, current_call, refresh_connections
from mcpauth.exceptions import AuditWriteFailed, CrossTenantAccess, NoPrincipal, ServiceError
from mcpauth.observability.request import record_call
from mcpauth.observability.tracing import step
from mcpauth.tenant_scope import confined

if TYPE_CHECKING:
    from fastmcp.tools.base import Tool, ToolResult

    from mcpauth.registry import ToolSpec

log = logging.getLogger(__name__)

#: What a server error looks like in the audit row (the reply is FastMCP's masked message).
INTERNAL_MESSAGE = "internal error"


class _Stage:
    BODY = "body"
    SERIALIZE = "serialize"


def record_outcome(
    call: CallContext, outcome: str, *, code: str = "", message: str = "", status: int = 200
) -> None:
    """Write the call's one audit row (sync; in the caller's transaction, if any).

    Marks the call ``recorded``; raises :class:`AuditWriteFailed` when the write fails.
    """
    try:
        record_call(call, outcome=outcome, status=status, error_code=code, error_message=message)
    except Exception as exc:
        raise AuditWriteFailed from exc
    call.recorded = True


def _record_failure(call: CallContext, outcome: str, code: str, message: str) -> None:
    """Record a failed call; a failing audit write marks the call (it becomes a 500)."""
    try:
        record_outcome(call, outcome, code=code, message=message)
    except AuditWriteFailed:
        log.exception("audit write failed")
        call.audit_failed = True


def _failure(exc: BaseException, stage: str) -> tuple[str, str, str, BaseException]:
    """``(outcome, error_code, audit message, exception to raise)`` for a failed call."""
    if isinstance(exc, DatabaseError) and rls.cross_tenant_violation(exc):
        # The database refused a row of another tenant (policy or composite key); the
        # transaction was rolled back. Reported like the ORM's own refusal.
        exc = CrossTenantAccess("The database refused a row of another tenant.")
        stage = _Stage.BODY
    elif stage == _Stage.BODY and isinstance(exc, ObjectDoesNotExist | Http404):
        # Model.DoesNotExist, get_object_or_404: inside a governed call that includes every
        # other tenant's rows, so the answer names nothing.
        message = "Not found."
        return Outcome.TOOL_ERROR, type(exc).__name__, message, ToolError(message)
    if stage == _Stage.SERIALIZE:
        # FastMCP's own ToolError ("Could not serialize the return value ..."): re-raised as
        # is, so the reply is the one plain FastMCP would give.
        return Outcome.SERVER_ERROR, "serialization_error", str(exc), exc
    if isinstance(exc, ServiceError):
        message = str(exc)
        return exc.outcome, type(exc).__name__, message, ToolError(message, log_level=logging.INFO)
    if isinstance(exc, ToolError):
        return Outcome.TOOL_ERROR, type(exc).__name__, str(exc), exc
    return Outcome.SERVER_ERROR, type(exc).__name__, INTERNAL_MESSAGE, exc


def _tenant_of(call: CallContext) -> int:
    """The admitted caller's tenant: a governed body never runs without one."""
    if call.principal is None:
        raise NoPrincipal("A governed body cannot run without an admitted principal.")
    return call.principal.tenant.id


def _prepare_connection() -> None:
    refresh_connections()
    rls.ensure()


class GovernedTool:
    """One registry entry turned into the function FastMCP registers (see module docstring)."""

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self._tool: Tool | None = None
        self._span_attributes = {"mcp.tool": spec.name, "gen_ai.tool.name": spec.name}

    def bind(self, tool: Tool) -> None:
        """The FastMCP tool made from :meth:`function` (its ``convert_result`` is used)."""
        self._tool = tool

    def _convert(self, raw: Any) -> ToolResult:
        assert self._tool is not None, "GovernedTool.bind() was not called"
        return self._tool.convert_result(raw)

    def function(self) -> Callable[..., Any]:
        """A function with the tool's own signature that runs it governed."""
        fn = self.spec.fn
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                return await self._run_async(args, kwargs)

            return run_async

        @functools.wraps(fn)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            return self._run_sync(args, kwargs)

        return run_sync

    def _run_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = current_call()
        call.tool_ran = True
        with confined(_tenant_of(call)):
            call.refresh_db()
            # Switched before the transaction opens, so a rollback cannot undo the switch.
            rls.ensure()
            return self._run_sync_confined(call, args, kwargs)

    def _run_sync_confined(
        self, call: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        stage = _Stage.BODY
        atomic = nullcontext() if self.spec.read_only else transaction.atomic()
        try:
            with atomic:
                with step("mcp.tool", self._span_attributes):
                    raw = self.spec.fn(*args, **kwargs)
                    if inspect.isgenerator(raw):
                        raw = list(raw)
                stage = _Stage.SERIALIZE
                result = self._convert(raw)
                record_outcome(call, Outcome.OK)
            return result
        except AuditWriteFailed:
            log.exception("audit write failed; the call was rolled back")
            call.audit_failed = True
            raise
        except Exception as exc:
            # A server error's traceback is logged by FastMCP, which masks it for the client.
            outcome, code, message, raised = _failure(exc, stage)
            _record_failure(call, outcome, code, message)
            if raised is exc:
                raise
            raise raised from None

    async def _run_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = current_call()
        call.tool_ran = True
        stage = _Stage.BODY
        try:
            with confined(_tenant_of(call)):
                # Django's async ORM runs on asgiref's thread-sensitive thread: refresh and
                # switch it there.
                await sync_to_async(_prepare_connection)()
                with step("mcp.tool", self._span_attributes):
                    raw = self.spec.fn(*args, **kwargs)
                    if inspect.isasyncgen(raw):
                        raw = [item async for item in raw]
                    else:
                        raw = await raw
                stage = _Stage.SERIALIZE
                result = self._convert(raw)
        except Exception as exc:
            outcome, code, message, raised = _failure(exc, stage)
            await sync_to_async(self._record_in_thread, thread_sensitive=False)(
                call, outcome, code, message
            )
            if raised is exc:
                raise
            raise raised from None
        try:
            await sync_to_async(self._record_ok_in_thread, thread_sensitive=False)(call)
        except AuditWriteFailed:
            log.exception("audit write failed")
            call.audit_failed = True
            raise
        return result

    @staticmethod
    def _record_ok_in_thread(call: CallContext) -> None:
        call.refresh_db()
        record_outcome(call, Outcome.OK)

    @staticmethod
    def _record_in_thread(call: CallContext, outcome: str, code: str, message: str) -> None:
        call.refresh_db()
        _record_failure(call, outcome, code, message)
