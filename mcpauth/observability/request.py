"""What one ``/mcp`` request reports: its span, its metrics, its access line, its audit timing.

The pipeline (``mcpauth.edge.pipeline``) calls in at five points, and everything else is here:

* :func:`request_started` when the request arrives: notes the start time and the caller's
  ``traceparent`` header, and wraps ``send`` to see the response status;
* :func:`request_parsed` once the JSON-RPC body is parsed: starts the request span (its parent
  comes from the header, else from ``params._meta``) and makes it current, so every later step
  (in the event loop, in worker threads, in FastMCP) is its child;
* :func:`admission_redone` when admission (re)starts in a worker thread: the steps an
  event-loop attempt took before it gave up are dropped, so the trace shows each step once;
* :func:`request_refused` for every refusal, before its audit row: counts auth failures and
  rate limits, and makes sure the trace id exists for the row;
* :func:`request_finished` at the very end: ends the span, updates ``mcp_requests_total`` and,
  for ``tools/call``, ``mcp_tool_calls_total`` and the duration histogram, and logs the access
  line.

:func:`access_logged` gives every other HTTP request (the Django side) its access line too.

:func:`record_call` is the one way a ``/mcp`` call's audit row is written (the tool runner,
FastMCP middleware and the governance pipeline all use it): the ``mcp.audit`` span, the audit
write histogram, and ``ctx.outcome``, which the metrics and the access line report.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from audit.models import Outcome
from audit.recorder import record
from mcpauth.conf import get_settings as mcp_settings
from mcpauth.downstream import records as outbound
from mcpauth.exceptions import (
    AccessDenied,
    InsufficientScope,
    InvalidToken,
    MCPAuthError,
    MissingToken,
    RateLimited,
)
from mcpauth.observability import logs, metrics, tracing

if TYPE_CHECKING:
    from mcpauth.runtime.context import CallContext

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_AUTH_FAILURES = (MissingToken, InvalidToken, InsufficientScope, AccessDenied)
_HTTP_VERBS = frozenset({"GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH"})


class Observation:
    """Per-request observability state (``CallContext.observation``)."""

    __slots__ = (
        "pending",
        "pending_token",
        "refusal",
        "scope",
        "span",
        "start_ns",
        "token",
        "traceparent",
    )

    def __init__(self, scope: Scope, traceparent: str | None) -> None:
        self.start_ns = time.time_ns()
        self.scope = scope
        self.traceparent = traceparent
        self.span: Any = None
        self.token: object = None
        self.refusal: MCPAuthError | None = None
        #: admission steps tried on the event loop (spans once the attempt stands)
        self.pending: list[tracing.Pending] = []
        self.pending_token: Any = None


def _traceparent(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"traceparent":
            return bytes(value).decode("latin-1")
    return None


def request_started(ctx: CallContext, scope: Scope, send: Send) -> Send:
    """Begin observing ``ctx``; returns the ``send`` to use (it records the status)."""
    obs = ctx.observation = Observation(scope, _traceparent(scope))
    if obs.traceparent is not None and not tracing.enabled():
        ctx.trace_id = tracing.trace_id_of(obs.traceparent)

    async def observed_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            ctx.status = int(message["status"])
        await send(message)

    return observed_send


def request_parsed(ctx: CallContext) -> None:
    """The body is parsed: join the caller's trace (or start one) and open the request span."""
    obs: Observation | None = ctx.observation
    if obs is None:
        return
    if not tracing.enabled():
        if not ctx.trace_id and ctx.message is not None:
            ctx.trace_id = tracing.trace_id_of(tracing.meta_carrier(ctx.message).get("traceparent"))
        return
    if obs.span is not None:
        return
    scope = obs.scope
    headers = {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
        for k, v in scope.get("headers", ())
    }
    parent = tracing.parent_context(headers, tracing.meta_carrier(ctx.message))
    http_method = ctx.http_method if ctx.http_method in _HTTP_VERBS else "_OTHER"
    route = mcp_settings().path
    attributes: dict[str, Any] = {
        "http.request.method": http_method,
        "http.route": route,
        "url.path": str(scope.get("path", ""))[:256],
        "url.scheme": str(scope.get("scheme", "http")),
        "network.protocol.version": str(scope.get("http_version", "")),
        "client.address": ctx.client_ip,
        "user_agent.original": ctx.user_agent[:256],
        "rpc.system": "jsonrpc",
        "rpc.jsonrpc.version": "2.0",
        "mcp.request_id": ctx.request_id,
    }
    if ctx.protocol_version:
        attributes["mcp.protocol.version"] = ctx.protocol_version
    if ctx.method:
        attributes["mcp.method"] = attributes["rpc.method"] = metrics.method_label(ctx.method)
    if ctx.rpc_id is not None:
        attributes["rpc.jsonrpc.request_id"] = str(ctx.rpc_id)[:64]
    if ctx.method == "tools/call":
        attributes["mcp.tool"] = metrics.tool_label(ctx.tool)
    obs.span, obs.token = tracing.start_server_span(
        f"{http_method} {route}", parent, obs.start_ns, attributes
    )
    if obs.span.is_recording():
        obs.pending_token = tracing.begin_pending(obs.pending)
    ctx.trace_id = tracing.format_trace_id(obs.span.get_span_context().trace_id)


def admission_redone(ctx: CallContext) -> None:
    """Admission starts (again) in a worker thread: an event-loop attempt did not stand."""
    obs: Observation | None = ctx.observation
    if obs is not None:
        obs.pending.clear()


def request_refused(ctx: CallContext, exc: MCPAuthError) -> None:
    """A refusal is about to be audited and sent: count it, and fix the trace id first."""
    obs: Observation | None = ctx.observation
    if obs is not None:
        obs.refusal = exc
        request_parsed(ctx)  # a refusal before the body was parsed still gets its span
    if isinstance(exc, RateLimited):
        metrics.rate_limited()
    elif isinstance(exc, _AUTH_FAILURES):
        metrics.auth_failure(exc.reason)


def _outcome(ctx: CallContext, status: int, refusal: MCPAuthError | None) -> str:
    if ctx.audit_failed:
        return str(Outcome.SERVER_ERROR)
    if ctx.outcome:
        return ctx.outcome
    if refusal is not None:
        return refusal.outcome
    if status >= 500:
        return str(Outcome.SERVER_ERROR)
    if status >= 400:
        return str(Outcome.INVALID_REQUEST)
    return str(Outcome.OK)


def request_finished(ctx: CallContext) -> None:
    """The request is over (answered, refused or failed): span, metrics and access line."""
    obs: Observation | None = ctx.observation
    if obs is None:
        return
    ctx.observation = None
    status = ctx.status or 500  # nothing was sent: the server failed
    outcome = _outcome(ctx, status, obs.refusal)
    elapsed = ctx.elapsed_ms()
    metrics.request_done(ctx.method, status)
    tool = metrics.tool_label(ctx.tool) if ctx.method == "tools/call" else ""
    if ctx.method == "tools/call":
        admitted = ctx.principal is not None and obs.refusal is None
        metrics.tool_call_done(ctx.tool, outcome, elapsed / 1000 if admitted else None)
    principal = ctx.principal
    client_id = principal.client_id if principal else (ctx.token.client_id if ctx.token else "")
    tenant = principal.tenant.external_id if principal else ""
    if obs.span is not None:
        attributes: dict[str, Any] = {"http.response.status_code": status, "mcp.outcome": outcome}
        if client_id:
            attributes["mcp.client_id"] = client_id
        if tenant:
            attributes["mcp.tenant"] = tenant
        if obs.refusal is not None:
            attributes["error.type"] = tracing.error_type(obs.refusal)
        elif status >= 500:
            attributes["error.type"] = str(status)
        if obs.pending_token is not None:
            tracing.end_pending(obs.span, obs.pending, obs.pending_token)
        tracing.end_server_span(obs.span, obs.token, attributes, error=status >= 500)
    logs.access(
        {
            "request_id": ctx.request_id,
            "trace_id": ctx.trace_id,
            "http_method": ctx.http_method,
            "path": str(obs.scope.get("path", ""))[:256],
            "method": metrics.method_label(ctx.method) if ctx.method else "",
            "tool": tool,
            "outcome": outcome,
            "status": status,
            "duration_ms": round(elapsed, 3),
            "client_id": client_id,
            "tenant": tenant,
            "client_ip": ctx.client_ip,
            "protocol_version": ctx.protocol_version,
        }
    )


def record_call(call: CallContext, **fields: Any) -> None:
    """Write ``call``'s audit row (sync; raises what :func:`audit.recorder.record` raises).

    ``fields`` are ``record``'s outcome, status, error code and message; the call's own fields
    (request id, principal, tool, arguments, trace id ...) come from ``call.audit_fields()``.
    """
    started = time.perf_counter()
    outcome = str(fields.get("outcome", ""))
    with tracing.step("mcp.audit", {"mcp.outcome": outcome}):
        outbound.flush(call)  # the outbound calls it made, in the same transaction
        record(**fields, **call.audit_fields())
    metrics.audit_written(time.perf_counter() - started)
    call.outcome = outcome


def access_logged(app: ASGIApp) -> ASGIApp:
    """``app`` (the Django side of the composition) with one access line per HTTP request.

    uvicorn's access log is off, so the admin, health, metrics and metadata endpoints log here:
    method, path (never the query string), status, duration and client address.
    """

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await app(scope, receive, observed_send)
        finally:
            from mcpauth.observability.conf import get_settings
            from mcpauth.types import client_ip

            logs.access(
                {
                    "request_id": "",
                    "trace_id": tracing.trace_id_of(_traceparent(scope)),
                    "http_method": str(scope.get("method", ""))[:16],
                    "path": str(scope.get("path", ""))[:256],
                    "method": "",
                    "tool": "",
                    "outcome": "",
                    "status": status or 500,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "client_id": "",
                    "tenant": "",
                    "client_ip": client_ip(scope, get_settings().trusted_proxies),
                    "protocol_version": "",
                }
            )

    return logged
