"""Governed MCP tools: one declaration of each tool's permissions, one audited runner.

``governed_tool(mcp, permissions=(...))`` registers a FastMCP tool and records the Django
permissions it needs in :data:`REGISTRY`. The middleware checks them before the tool runs
(403 + step-up challenge), ``tools/list`` hides tools the caller may not call, and
:func:`run_tool` executes the tool's body in a transaction together with its audit row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic
from django.db import transaction
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_request

from audit.models import Outcome
from audit.recorder import record
from mcpauth.context import SCOPE_KEY, CallContext
from mcpauth.exceptions import ServiceError
from mcpauth.tokens import Principal

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ToolSpec:
    name: str
    permissions: tuple[str, ...]
    #: A read-only tool changes nothing, so its audit row needs no shared transaction.
    read_only: bool
    fn: Callable[..., Any] = field(repr=False)
    #: The function behind pydantic argument validation (lax mode, unknown arguments refused),
    #: as FastMCP validates them.
    validated: Callable[..., Any] = field(repr=False)


REGISTRY: dict[str, ToolSpec] = {}
_CURRENT: ContextVar[CallContext | None] = ContextVar("mcpauth_current_call", default=None)


def governed_tool(
    mcp: FastMCP, *, permissions: tuple[str, ...], read_only: bool = False
) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        REGISTRY[fn.__name__] = ToolSpec(
            fn.__name__, tuple(permissions), read_only, fn, pydantic.validate_call(fn)
        )
        mcp.tool(fn, annotations={"readOnlyHint": read_only, "destructiveHint": not read_only})
        return fn

    return decorator


def visible_tools(principal: Principal) -> set[str]:
    return {name for name, spec in REGISTRY.items() if principal.has_perms(spec.permissions)}


def current_call() -> CallContext:
    ctx = _CURRENT.get()
    if ctx is None:
        ctx = get_http_request().scope.get(SCOPE_KEY)
    if not isinstance(ctx, CallContext) or ctx.principal is None:
        raise ToolError("Not authenticated.")
    return ctx


class AuditWriteFailed(Exception):
    pass


def run_tool(body: Callable[[Principal], Any]) -> Any:
    """Run a tool body for the current caller, with its audit row in the same transaction.

    * success: the body's writes and an ``ok`` row commit together (a read-only tool has no
      writes, so its row is simply committed after the read: two round trips fewer);
    * :class:`ServiceError`: the body's writes roll back; a row with the error's outcome is
      written and the client gets a tool error with the error's message;
    * anything else: rolled back, a ``server_error`` row, and a generic tool error;
    * the audit write itself fails: everything rolls back and the call becomes a server error.
    """
    ctx = current_call()
    principal = ctx.principal
    assert principal is not None
    ctx.tool_ran = True
    ctx.refresh_db()
    atomic = nullcontext() if REGISTRY[ctx.tool].read_only else transaction.atomic()
    try:
        with atomic:
            result = body(principal)
            try:
                record(outcome=Outcome.OK, status=200, **ctx.audit_fields())
            except Exception as exc:
                raise AuditWriteFailed from exc
        ctx.recorded = True
        return result
    except AuditWriteFailed:
        log.exception("audit write failed; the call was rolled back")
        ctx.audit_failed = True
        raise ToolError("Internal error.") from None
    except ServiceError as exc:
        _record_failure(ctx, exc.outcome, type(exc).__name__, str(exc))
        raise ToolError(str(exc)) from None
    except Exception as exc:
        log.exception("tool %s failed", ctx.tool)
        _record_failure(ctx, Outcome.SERVER_ERROR, type(exc).__name__, "internal error")
        raise ToolError("Internal error.") from None


def _record_failure(ctx: CallContext, outcome: str, code: str, message: str) -> None:
    try:
        record(
            outcome=outcome,
            status=200,
            error_code=code,
            error_message=message,
            **ctx.audit_fields(),
        )
        ctx.recorded = True
    except Exception:
        log.exception("audit write failed")
        ctx.audit_failed = True


def _describe(exc: pydantic.ValidationError) -> str:
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]
    return "Invalid arguments: " + "; ".join(problems)


def call_direct(ctx: CallContext) -> bytes:
    """Run ``tools/call`` for an admitted caller without FastMCP's transport machinery.

    Used by the middleware's fast path (handshake-era protocol versions). Arguments are
    validated as FastMCP validates them; the result is FastMCP's ``CallToolResult``, encoded.
    The audit row is written here in every case (by :func:`run_tool` for the tool's own
    outcomes, here for invalid arguments).
    """
    spec = REGISTRY[ctx.tool]
    arguments = ctx.arguments if ctx.arguments is not None else {}
    if not isinstance(arguments, dict):
        message = "Invalid arguments: arguments must be an object."
        _record_failure(ctx, Outcome.INVALID_REQUEST, "invalid_arguments", message)
        return _error_result(message)
    token = _CURRENT.set(ctx)
    try:
        result = spec.validated(**arguments)
    except pydantic.ValidationError as exc:
        message = _describe(exc)
        if not ctx.tool_ran:  # a ValidationError from the body itself is run_tool's to record
            _record_failure(ctx, Outcome.INVALID_REQUEST, "invalid_arguments", message)
        return _error_result(message)
    except ToolError as exc:
        return _error_result(str(exc))
    finally:
        _CURRENT.reset(token)
    # Encode the result once: the text content is that JSON, and so is structuredContent.
    text = json.dumps(result, separators=(",", ":"))
    return (
        b'{"content":[{"type":"text","text":'
        + json.dumps(text).encode()
        + b'}],"isError":false,"structuredContent":'
        + text.encode()
        + b"}"
    )


def _error_result(message: str) -> bytes:
    return json.dumps(
        {"content": [{"type": "text", "text": message}], "isError": True}, separators=(",", ":")
    ).encode()
