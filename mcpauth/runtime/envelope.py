"""A ``/mcp`` request's JSON-RPC envelope (its body was read by
:func:`mcpauth.edge.guards.read_body`, within a size cap and a time limit).

* :func:`parse_envelope` fills the call's context from the JSON-RPC message. A malformed envelope
  (not JSON, a batch, no ``jsonrpc``, an ``id`` that is not a string or an integer, an unknown
  tool ...) is stored and answered after authentication (the bad ``id`` as the MCP SDK's
  2026-07-28 entry answers it: -32600 with ``id: null``, on both eras and transports). A
  ``method`` outside the JSON-RPC method alphabet (:data:`METHOD_RE`) or a tool name outside the
  MCP tool-name alphabet (:func:`mcpauth.runtime.registry.is_tool_name`) is refused at once, before
  any token work: no tool can have such a name, and the refusal's audit row holds the name escaped
  (:func:`escaped`), never verbatim.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mcpauth.conf import MCPAuthSettings
from mcpauth.exceptions import (
    InvalidMethod,
    InvalidRequest,
    InvalidToolName,
    ParseError,
    UnknownTool,
)
from mcpauth.runtime.components import uri_for_audit
from mcpauth.runtime.context import CallContext
from mcpauth.runtime.registry import MAX_TOOL_NAME, is_tool_name, registry

#: The longest method (the audit row's ``method`` column).
MAX_METHOD = 64
#: JSON-RPC method names this server accepts at all: ASCII letters, digits, ``/ _ . -`` (every
#: MCP method, ``tools/call`` or ``notifications/roots/list_changed``, is one). Anything else
#: (spaces, control or bidi characters, non-ASCII, over ``MAX_METHOD`` characters) is an
#: Invalid Request (-32600) before admission.
METHOD_RE = re.compile(rf"[A-Za-z0-9/_.-]{{1,{MAX_METHOD}}}")


def escaped(value: str, limit: int) -> str:
    """``value`` for a record: every non-ASCII or control character as a ``\\x``/``\\u``
    escape (a bidi override cannot reorder what a reader sees), cut to ``limit`` characters."""
    return value.encode("unicode_escape").decode("ascii")[:limit]


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests deeper than ``limit`` (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _is_request_id(value: Any) -> bool:
    """MCP: a request id is a string or an integer (never null, a float or a boolean)."""
    return isinstance(value, str | int) and not isinstance(value, bool)


#: The methods that name a governed component, and the parameter that names it.
_NAMING = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}
#: The methods audited whatever ``AUDIT_RECORD_ALL_METHODS`` says: a governed body may run.
ALWAYS_AUDITED = frozenset(_NAMING)


def parse_envelope(ctx: CallContext, body: bytes, conf: MCPAuthSettings) -> None:
    """Fill ``ctx`` from a JSON-RPC body; store (not raise) envelope errors for after auth.

    Raises ``InvalidMethod`` or ``InvalidToolName`` for a name no request may carry (refused
    before admission, see the module docstring).
    """
    try:
        message = json.loads(body)
    except RecursionError:
        ctx.parse_error = InvalidRequest("JSON nested too deeply.")
        return
    except ValueError:
        ctx.parse_error = ParseError()
        return
    if isinstance(message, list):
        ctx.parse_error = InvalidRequest("Batch requests are not supported.")
        return
    if not isinstance(message, dict):
        ctx.parse_error = InvalidRequest("The body must be a JSON-RPC object.")
        return
    if _depth(message, conf.max_json_depth):
        ctx.parse_error = InvalidRequest("JSON nested too deeply.")
        return
    ctx.message = message
    rpc_id = message.get("id")
    ctx.rpc_id = rpc_id if _is_request_id(rpc_id) else None  # JSON-RPC: answer with null
    ctx.is_notification = "id" not in message
    method = message.get("method")
    if not isinstance(method, str) or message.get("jsonrpc") != "2.0":
        if "result" in message or "error" in message:
            ctx.method = "response"
            return
        ctx.parse_error = InvalidRequest("Not a JSON-RPC 2.0 request.")
        return
    if METHOD_RE.fullmatch(method) is None:
        ctx.method = escaped(method, MAX_METHOD)
        raise InvalidMethod()
    ctx.method = method
    if not ctx.is_notification and ctx.rpc_id is None:
        # Not executed by anyone: the MCP SDK's 2026-07-28 entry answers this very error, its
        # handshake-era transport would have taken the message for a notification (202).
        ctx.parse_error = InvalidRequest(
            "Invalid request: the id must be a string or an integer.", reason="invalid_id"
        )
    if method not in _NAMING:
        return
    params = message.get("params")
    field = _NAMING[method]
    if not isinstance(params, dict) or not isinstance(params.get(field), str):
        ctx.parse_error = ctx.parse_error or InvalidRequest(f"{method} needs params.{field}.")
        return
    target = params[field]
    if method == "resources/read":
        ctx.tool = uri_for_audit(target, MAX_TOOL_NAME)  # never its query or user info
        ctx.component = registry.resources.resolve(target)
        return  # an unknown URI gets FastMCP's own not-found error
    if not is_tool_name(target):
        ctx.tool = escaped(target, MAX_TOOL_NAME)
        raise InvalidToolName()
    ctx.tool = target
    ctx.arguments = params.get("arguments", {})
    if method == "prompts/get":
        ctx.component = registry.prompts.get(target)
        return  # an unknown prompt gets FastMCP's own not-found error
    ctx.component = registry.get(target)
    # sent as a notification, a call is accepted and never runs (nor is it authorised): which
    # tools exist is nobody's business there
    if ctx.parse_error is None and not ctx.is_notification and ctx.component is None:
        ctx.parse_error = UnknownTool(f"Unknown tool: {target!r}.")
