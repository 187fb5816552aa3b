"""How every governed body runs: FastMCP's own runner, plus a transaction and the audit row.

One path for tools, resources (and resource templates) and prompts: :class:`GovernedBody`, with
:class:`GovernedTool`, :class:`GovernedResource` and :class:`GovernedPrompt` differing only in
the span, the domain error and which bodies get a transaction.

FastMCP owns execution. It validates the arguments (a tool's arguments, a template's URI
parameters, a prompt's arguments), injects ``Context``, runs a sync body in its worker pool,
converts the result (``Tool.convert_result``, which also builds the structured content its output
schema describes; ``Resource``/``ResourceTemplate``/``Prompt.convert_result``) and puts it on the
wire for the negotiated protocol version. Governance adds one thing, a wrapper around the
*function* with the function's own signature (``functools.wraps``), so FastMCP derives exactly
the schemas and arguments it would for the bare function:

* **Sync bodies** run in FastMCP's worker thread. The wrapper opens ``transaction.atomic()``
  there, calls the function, converts its result with the component's own ``convert_result``
  and writes the ``ok`` audit row, then commits: the body's writes, the serialization of its
  result and its audit row commit together, and if any of them fails all of it rolls back.
  FastMCP then passes the converted result (``ToolResult``, ``ResourceResult``,
  ``PromptResult``) through unchanged. A ``read_only`` tool runs without the transaction (it
  has nothing to roll back); resources and prompts always have one.
* **Async bodies** run on the event loop. Django 5.2 has no async transactions, so each of their
  ORM calls commits on its own; the wrapper converts the result, then writes the audit row (in a
  worker thread) before the reply. A result that fails to serialize still gives a
  ``server_error`` row and reply, but writes the body already made stay.

What the body raises decides the audit outcome and the reply, identically on every path:

* :class:`~mcpauth.exceptions.ServiceError` → its ``outcome`` (``tool_error``, ``denied`` ...)
  and its message, as FastMCP's ``ToolError``/``ResourceError``/``PromptError`` (a tool error
  result, or the JSON-RPC error of a read or get);
* that FastMCP error raised by the body itself → ``tool_error`` and its message;
* anything else → ``server_error``; the exception propagates to FastMCP, which masks it
  (``mask_error_details``) into the same generic error plain FastMCP would send;
* the audit row cannot be written → everything rolls back and the call is answered 500.

Invalid arguments never reach the wrapper: FastMCP refuses them first, and
:class:`mcpauth.runtime.server.Governance` records those.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types
from asgiref.sync import sync_to_async
from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, transaction
from django.http import Http404
from fastmcp.exceptions import FastMCPError, PromptError, ResourceError, ToolError
from fastmcp.prompts.base import InputRequiredPromptResult
from fastmcp.resources.base import InputRequiredResourceResult
from fastmcp.tools.base import InputRequiredToolResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from audit.models import Outcome
from audit.recorder import CommitFailed
from mcpauth import rls
from mcpauth.exceptions import AuditWriteFailed, CrossTenantAccess, NoPrincipal, ServiceError
from mcpauth.observability.request import record_call
from mcpauth.observability.tracing import step
from mcpauth.runtime.context import CallContext, current_call, refresh_connections
from mcpauth.tenant_scope import confined

if TYPE_CHECKING:
    from mcpauth.runtime.components import PromptSpec, ResourceSpec
    from mcpauth.runtime.registry import ToolSpec

log = logging.getLogger(__name__)

#: What a server error looks like in the audit row (the reply is FastMCP's masked message).
INTERNAL_MESSAGE = "internal error"


class _Stage:
    BODY = "body"
    SERIALIZE = "serialize"
    #: the row and the transaction's commit (a deferred constraint fails here)
    COMMIT = "commit"


def record_outcome(
    call: CallContext,
    outcome: str,
    *,
    code: str = "",
    message: str = "",
    status: int = 200,
    commit: bool = False,
) -> None:
    """Write the call's one audit row (sync; in the caller's transaction, if any).

    Marks the call ``recorded``; raises :class:`AuditWriteFailed` when the write fails.
    ``commit``: the row ends the caller's transaction (``audit.recorder``); when that commit
    fails, the database's error is raised as the block's own commit would have raised it.
    """
    try:
        record_call(
            call,
            outcome=outcome,
            status=status,
            error_code=code,
            error_message=message,
            commit=commit,
        )
    except CommitFailed as failed:
        raise failed.error from failed.error.__cause__  # the driver's error stays its cause
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


async def arecord(
    call: CallContext, outcome: str, *, code: str = "", message: str = "", status: int = 200
) -> None:
    """:func:`_record_failure` from the event loop: in a worker thread, and shielded, so a
    cancelled request still leaves its one row (and never a second one)."""

    def write() -> None:
        call.refresh_db()
        try:
            record_outcome(call, outcome, code=code, message=message, status=status)
        except AuditWriteFailed:
            log.exception("audit write failed")
            call.audit_failed = True

    with anyio.CancelScope(shield=True):
        await sync_to_async(write, thread_sensitive=False)()


#: What a body returns to ask the client for input (MCP 2026-07-28), as FastMCP wraps it.
INPUT_REQUIRED_RESULTS = (
    InputRequiredToolResult,
    InputRequiredResourceResult,
    InputRequiredPromptResult,
)


#: The status of a call whose client went away before its reply (nginx's "client closed
#: request": no response was delivered).
CLIENT_CLOSED = 499
DISCONNECTED = "disconnected"


def status_of(call: CallContext) -> int:
    """The HTTP status a call's row records: 499 once its client went away, else 200."""
    return CLIENT_CLOSED if call.cancelled == DISCONNECTED else 200


def completed(call: CallContext, result: Any) -> tuple[str, str, str]:
    """``(outcome, error_code, message)`` of a body that returned ``result`` (converted)."""
    if not call.cancelled and call.client_gone is not None and call.client_gone():
        call.cancelled = DISCONNECTED  # gone before the call could notice: nobody gets the reply
    if call.cancelled:
        return (
            Outcome.CANCELLED,
            call.cancelled,
            "The client gave up before the reply; the body ran to completion and what it "
            "wrote stands.",
        )
    if isinstance(result, INPUT_REQUIRED_RESULTS):
        if call.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            # FastMCP answers it with its own error: the result type does not exist before
            return (
                Outcome.TOOL_ERROR,
                "input_required_unsupported",
                "The body asked the client for input (InputRequiredResult), which MCP "
                f"{call.protocol_version or 'of the handshake era'} cannot carry.",
            )
        requests = result.input_required.input_requests or {}
        asked = ", ".join(f"{key} ({r.method})" for key, r in sorted(requests.items()))
        return (
            Outcome.INPUT_REQUIRED,
            "input_required",
            f"Asked the client for input: {asked or 'none (state only)'}."[:300],
        )
    return Outcome.OK, "", ""


def _tenant_of(call: CallContext) -> int:
    """The admitted caller's tenant: a governed body never runs without one."""
    if call.principal is None:
        raise NoPrincipal("A governed body cannot run without an admitted principal.")
    return call.principal.tenant.id


def _prepare_connection() -> None:
    refresh_connections()
    rls.ensure()


class GovernedBody:
    """One registry entry's function, governed: what every tool, resource and prompt runs in.

    :meth:`function` is a wrapper with the function's own signature (``functools.wraps``) that
    FastMCP registers in place of the function; :meth:`bind` hands it the FastMCP component made
    from that wrapper, whose own ``convert_result`` turns the body's return value into FastMCP's
    result. :meth:`_run_sync` and :meth:`_run_async` are the only places a governed body runs
    (see the module docstring); the subclasses differ only in the span they open, the domain
    error they answer with and how a failed conversion is recorded.
    """

    #: The span the body runs in (``mcpauth.observability.tracing.step``).
    span_name = "mcp.tool"
    #: The FastMCP error a ``ServiceError`` becomes: its message reaches the client.
    error_class: type[FastMCPError] = ToolError

    def __init__(
        self, fn: Callable[..., Any], *, transactional: bool, span_attributes: dict[str, str]
    ) -> None:
        self.fn = fn
        #: A sync body runs in ``transaction.atomic()`` with its audit row.
        self.transactional = transactional
        self._component: Any = None
        self._span_attributes = span_attributes

    def bind(self, component: Any) -> None:
        """The FastMCP component made from :meth:`function` (its ``convert_result`` is used)."""
        self._component = component

    def _convert(self, raw: Any) -> Any:
        assert self._component is not None, f"{type(self).__name__}.bind() was not called"
        return self._component.convert_result(raw)

    def _serialization_message(self, exc: BaseException) -> str:
        """The audit message for a result ``convert_result`` refused (no value in it)."""
        return f"the result could not be converted ({type(exc).__name__})"

    def _failure(self, exc: BaseException, stage: str) -> tuple[str, str, str, BaseException]:
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
            return Outcome.TOOL_ERROR, type(exc).__name__, message, self.error_class(message)
        if stage == _Stage.SERIALIZE:
            # re-raised as is, so the reply is the one plain FastMCP would give
            return (
                Outcome.SERVER_ERROR,
                "serialization_error",
                self._serialization_message(exc),
                exc,
            )
        if isinstance(exc, ServiceError):
            message = str(exc)
            raised = self.error_class(message, log_level=logging.INFO)
            return exc.outcome, type(exc).__name__, message, raised
        if isinstance(exc, self.error_class):
            return Outcome.TOOL_ERROR, type(exc).__name__, str(exc), exc
        return Outcome.SERVER_ERROR, type(exc).__name__, INTERNAL_MESSAGE, exc

    def function(self) -> Callable[..., Any]:
        """A function with the body's own signature that runs it governed."""
        fn = self.fn
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
        atomic = transaction.atomic() if self.transactional else nullcontext()
        try:
            with atomic:
                with step(self.span_name, self._span_attributes):
                    raw = self.fn(*args, **kwargs)
                    if inspect.isgenerator(raw):
                        raw = list(raw)
                stage = _Stage.SERIALIZE
                result = self._convert(raw)
                outcome, code, message = completed(call, result)
                stage = _Stage.COMMIT
                # the row is the transaction's last statement: its COMMIT goes with it
                record_outcome(
                    call,
                    outcome,
                    code=code,
                    message=message,
                    status=status_of(call),
                    commit=self.transactional,
                )
            return result
        except AuditWriteFailed:
            log.exception("audit write failed; the call was rolled back")
            call.audit_failed = True
            raise
        except Exception as exc:
            # A server error's traceback is logged by FastMCP, which masks it for the client.
            outcome, code, message, raised = self._failure(exc, stage)
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
                with step(self.span_name, self._span_attributes):
                    raw = self.fn(*args, **kwargs)
                    if inspect.isasyncgen(raw):
                        raw = [item async for item in raw]
                    else:
                        raw = await raw
                stage = _Stage.SERIALIZE
                result = self._convert(raw)
        except Exception as exc:
            outcome, code, message, raised = self._failure(exc, stage)
            await arecord(call, outcome, code=code, message=message)
            if raised is exc:
                raise
            raise raised from None
        outcome, code, message = completed(call, result)
        await arecord(call, outcome, code=code, message=message, status=status_of(call))
        if call.audit_failed:
            raise AuditWriteFailed
        return result


class GovernedTool(GovernedBody):
    """A tool: ``ServiceError`` and ``ToolError`` are tool errors; read-only tools run without
    a transaction."""

    def __init__(self, spec: ToolSpec) -> None:
        super().__init__(
            spec.fn,
            transactional=not spec.read_only,
            span_attributes={"mcp.tool": spec.name, "gen_ai.tool.name": spec.name},
        )
        self.spec = spec

    def _serialization_message(self, exc: BaseException) -> str:
        # FastMCP's own ToolError ("Could not serialize the return value ..."): no value in it
        return str(exc)

    def _convert(self, raw: Any) -> Any:
        # A guard tool's ask (MCP 2026-07-28) is the round's result, never content: wrapped as
        # FastMCP's FunctionTool.run wraps it, so FastMCP puts it on the wire as input_required
        # (resources and prompts wrap it in their own convert_result).
        if isinstance(raw, mcp_types.InputRequiredResult):
            return InputRequiredToolResult(raw)
        return super()._convert(raw)


class GovernedResource(GovernedBody):
    """A resource or resource template: ``ServiceError`` and ``ResourceError`` are the body's
    own errors (their message is the JSON-RPC error's); always in a transaction when sync."""

    span_name = "mcp.resource"
    error_class = ResourceError

    def __init__(self, spec: ResourceSpec) -> None:
        super().__init__(
            spec.fn, transactional=True, span_attributes={"mcp.resource.template": spec.uri}
        )
        self.spec = spec


class GovernedPrompt(GovernedBody):
    """A prompt: ``ServiceError`` and ``PromptError`` are the body's own errors; always in a
    transaction when sync."""

    span_name = "mcp.prompt"
    error_class = PromptError

    def __init__(self, spec: PromptSpec) -> None:
        super().__init__(
            spec.fn, transactional=True, span_attributes={"mcp.prompt.name": spec.name}
        )
        self.spec = spec
