"""The platform's one MCP server: FastMCP, built from the tool registry.

:func:`get_server` builds it once per process, after every app's ``mcp.py`` was discovered:
each :class:`~mcpauth.registry.ToolSpec` becomes a FastMCP tool made from its
:class:`~mcpauth.runner.GovernedTool` function (same signature, so FastMCP derives the same
input and output schemas it would for the bare function), with the declared annotations.
No app builds a FastMCP instance of its own, and ``config`` only composes the ASGI app.

:class:`Governance` is the FastMCP middleware that ties FastMCP's runner to the call's
``Principal`` and audit row:

* ``tools/list`` shows only the tools the caller may call;
* arguments FastMCP refuses are answered with the field and the problem only, never an
  argument's value (FastMCP's own message quotes ``input_value``), and audited as
  ``invalid_request``;
* anything else that fails before the tool body ran is audited (the body's outcomes are the
  runner's to record).
"""

from __future__ import annotations

import logging
import threading
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic
import pydantic_core.core_schema
from asgiref.sync import sync_to_async
from fastmcp import FastMCP
from fastmcp.exceptions import NotFoundError, ToolError
from fastmcp.exceptions import ValidationError as ArgumentsInvalid
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import FunctionTool

from audit.models import Outcome
from mcpauth.conf import get_settings
from mcpauth.context import CallContext, get_call
from mcpauth.exceptions import AuditWriteFailed
from mcpauth.registry import ToolRegistry, registry
from mcpauth.runner import INTERNAL_MESSAGE, GovernedTool, record_outcome

log = logging.getLogger(__name__)

_KNOWN_ERROR_TYPES = frozenset(typing.get_args(pydantic_core.core_schema.ErrorType))
#: Error context keys whose values come from the input (``uuid_parsing``'s parser message,
#: a discriminated union's tag ...): such an error is reported by its type only.
_INPUT_CONTEXT_KEYS = frozenset({"error", "tag"})
_CUSTOM_ERROR_TYPES = frozenset({"value_error", "assertion_error"})


def _schema_keys(schema: Any) -> set[str]:
    """Every property name an input schema defines, nested models and ``$defs`` included."""
    keys: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                keys.update(k for k in props if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return keys


def describe_invalid_arguments(exc: BaseException, schema_keys: Iterable[str]) -> str:
    """``Invalid arguments: <field>: <problem>; …`` without any argument value.

    A location names the argument and, inside it, the schema's own field names and list
    indexes; any other key (a key inside a ``dict`` argument is data) reads ``[key]``. The
    problem is pydantic's message for its built-in error types, unless that message is built
    from the input (then the error type only), and ``invalid value`` for custom validators.
    """
    cause = exc.__cause__ if isinstance(exc.__cause__, pydantic.ValidationError) else exc
    if not isinstance(cause, pydantic.ValidationError):
        return "Invalid arguments."
    known = set(schema_keys)
    problems = []
    for err in cause.errors(include_url=False, include_input=False):
        loc = err.get("loc") or ()
        parts = []
        for i, part in enumerate(loc):
            if isinstance(part, int) or i == 0 or part in known:
                parts.append(str(part))
            else:
                parts.append("[key]")
        kind = str(err.get("type", ""))
        ctx = err.get("ctx") or {}
        if kind in _CUSTOM_ERROR_TYPES or kind not in _KNOWN_ERROR_TYPES:
            problem = "invalid value"
        elif _INPUT_CONTEXT_KEYS & set(ctx):
            problem = f"invalid value ({kind})"
        else:
            problem = str(err.get("msg", "invalid value"))
        problems.append(f"{'.'.join(parts) or 'arguments'}: {problem}")
    return "Invalid arguments: " + "; ".join(problems or ["invalid value"])


def _record_in_thread(call: CallContext, outcome: str, code: str, message: str) -> None:
    call.refresh_db()
    try:
        record_outcome(call, outcome, code=code, message=message)
    except AuditWriteFailed:
        log.exception("audit write failed")
        call.audit_failed = True


class Governance(Middleware):
    """FastMCP middleware: tool visibility and the audit of calls refused before the body."""

    def __init__(self, tool_registry: ToolRegistry) -> None:
        self.registry = tool_registry
        #: tool name -> the property names of its input schema (for safe error locations)
        self.schema_keys: dict[str, frozenset[str]] = {}

    async def on_list_tools(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Sequence[Any]:
        tools = await call_next(context)
        call = get_call()
        if call is None or call.principal is None:
            return []  # fail closed: no caller, no tools
        allowed = self.registry.visible_to(call.principal)
        return [t for t in tools if t.name in allowed]

    async def on_call_tool(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        try:
            return await call_next(context)
        except Exception as exc:
            call = get_call()
            if call is None or call.recorded or call.tool_ran:
                raise  # the body's outcome was recorded by the runner
            name = str(getattr(context.message, "name", ""))
            if isinstance(exc, ArgumentsInvalid):
                message = describe_invalid_arguments(exc, self.schema_keys.get(name, ()))
                await sync_to_async(_record_in_thread, thread_sensitive=False)(
                    call, Outcome.INVALID_REQUEST, "invalid_arguments", message
                )
                raise ToolError(message, log_level=logging.INFO) from None
            if isinstance(exc, NotFoundError):
                outcome, code, message = Outcome.INVALID_REQUEST, "unknown_tool", str(exc)
            elif isinstance(exc, ToolError):
                outcome, code, message = Outcome.TOOL_ERROR, type(exc).__name__, str(exc)
            else:
                outcome, code, message = Outcome.SERVER_ERROR, type(exc).__name__, INTERNAL_MESSAGE
            await sync_to_async(_record_in_thread, thread_sensitive=False)(
                call, outcome, code, message
            )
            raise


def build_server(tool_registry: ToolRegistry = registry) -> FastMCP[Any]:
    """A FastMCP server serving every tool of ``tool_registry``, governed."""
    conf = get_settings()
    governance = Governance(tool_registry)
    server: FastMCP[Any] = FastMCP(
        name=conf.resource_name,
        instructions=conf.instructions or None,
        mask_error_details=True,
        middleware=[governance],
    )
    for spec in tool_registry:
        governed = GovernedTool(spec)
        tool = FunctionTool.from_function(
            governed.function(),
            name=spec.name,
            description=spec.description,
            annotations=spec.annotations,  # type: ignore[arg-type]
        )
        governed.bind(tool)
        server.add_tool(tool)
        governance.schema_keys[spec.name] = frozenset(_schema_keys(tool.parameters))
    return server


_server: FastMCP[Any] | None = None
_server_lock = threading.Lock()


def get_server() -> FastMCP[Any]:
    """The process's MCP server, built on first use (after app loading)."""
    global _server
    if _server is None:
        with _server_lock:
            if _server is None:
                _server = build_server()
    return _server
