"""What the ``/mcp`` edge does with a reply: its audit row and its headers.

A call's row is written before its reply leaves (a reply held until the row is committed; in a
streamed reply, the chunk that carries the JSON-RPC reply); the outcome is read from the reply
FastMCP produced (:func:`outcome_from_response`), and a row that cannot be written turns the
reply into a 500 (:func:`audit_failed`). Replies get ``X-Request-ID`` and the rate-limit headers
(:func:`with_headers`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from asgiref.sync import sync_to_async

from audit.conf import get_settings as audit_settings
from audit.models import Outcome
from mcpauth.conf import MCPAuthSettings
from mcpauth.exceptions import MCPAuthError, error_response
from mcpauth.observability import request as observe
from mcpauth.runtime.context import CallContext
from mcpauth.runtime.envelope import ALWAYS_AUDITED
from mcpauth.runtime.streaming import sse_event, sse_reply
from mcpauth.types import Message

log = logging.getLogger(__name__)


def never_runs(ctx: CallContext) -> bool:
    """A request method sent as a notification (no ``id``): the server must not answer it, and
    the MCP SDK accepts it (202) without running anything."""
    return ctx.is_notification and not ctx.method.startswith("notifications/")


def outcome_from_response(ctx: CallContext, status: int, body: bytes) -> tuple[str, str, str]:
    """``(outcome, error_code, message)`` for a response FastMCP produced."""
    if status >= 500:
        return Outcome.SERVER_ERROR, f"http_{status}", ""
    if status >= 400:
        return Outcome.INVALID_REQUEST, f"http_{status}", ""
    if never_runs(ctx):
        return (
            Outcome.NOT_EXECUTED,
            "notification",
            f"'{ctx.method}' was sent without an id, as a notification: accepted, not executed.",
        )
    if not body:
        return Outcome.OK, "", ""
    try:
        payload = json.loads(body)
    except ValueError:
        return Outcome.OK, "", ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        code = err.get("code")
        outcome = Outcome.SERVER_ERROR if code == -32603 else Outcome.INVALID_REQUEST
        return outcome, f"jsonrpc_{code}", str(err.get("message", ""))
    result = payload.get("result") if isinstance(payload, dict) else None
    if isinstance(result, dict) and result.get("isError"):
        text = ""
        content = result.get("content")
        if isinstance(content, list) and content and isinstance(content[0], dict):
            text = str(content[0].get("text", ""))
        if ctx.tool_ran:
            return Outcome.TOOL_ERROR, "tool_error", text
        return Outcome.INVALID_REQUEST, "invalid_arguments", text
    return Outcome.OK, "", ""


def audit_failed() -> MCPAuthError:
    """The 500 a call gets when its audit row could not be written (no reply without one)."""
    return MCPAuthError("Internal error: audit write failed.")


async def streamed(ctx: CallContext, conf: MCPAuthSettings, message: Message) -> Message:
    """A chunk of a streamed (SSE) reply: the one that carries the JSON-RPC reply goes out
    after the row, as a JSON reply does, and is the 500's error if the row failed."""
    if ctx.recorded and not ctx.audit_failed:
        return message
    reply = sse_reply(message.get("body", b""))
    if reply is None:
        return message
    if ctx.audit_failed:
        exc = audit_failed()
        await write_row(ctx, outcome=exc.outcome, status=200, error_code=exc.reason[:64])
        _, _, body = error_response(
            exc, resource_metadata=conf.resource_metadata_url, request_id=ctx.rpc_id
        )
        return {**message, "body": sse_event(body)}
    if should_record(ctx):
        outcome, code, text = outcome_from_response(ctx, 200, reply)
        await write_row(ctx, outcome=outcome, status=200, error_code=code, error_message=text)
    return message


def with_headers(ctx: CallContext, start: Message, body: bytes | None) -> Message:
    """The response start with ``X-Request-ID``, rate-limit headers and the final length."""
    headers = [
        (k, v)
        for k, v in start.get("headers", [])
        if body is None or k.lower() != b"content-length"
    ]
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"x-request-id", ctx.request_id.encode()))
    if ctx.usage is not None:
        headers.extend((k.encode(), v.encode()) for k, v in ctx.usage.headers())
    return {"type": "http.response.start", "status": start["status"], "headers": headers}


def should_record(ctx: CallContext) -> bool:
    """Whether this request gets an audit row here: a method naming a tool, resource or prompt
    always, any other unless ``AUDIT_RECORD_ALL_METHODS`` is off."""
    return ctx.method in ALWAYS_AUDITED or audit_settings().record_all_methods


async def write_row(ctx: CallContext, **fields: Any) -> bool:
    """Write the request's audit row in a thread; whether it was written (a failure is logged)."""

    def write() -> None:
        ctx.refresh_db()
        observe.record_call(ctx, **fields)

    try:
        await sync_to_async(write, thread_sensitive=False)()
    except Exception:
        log.exception("audit write failed")
        return False
    ctx.recorded = True
    return True
