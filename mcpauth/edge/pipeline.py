"""The governance pipeline for ``/mcp``: an ASGI app in front of the platform's MCP server.

For every request, in order:

1. ``Host``/``Origin`` check (DNS-rebinding protection) → 403;
2. body read with a size cap and a time limit → 413/408, and the JSON-RPC envelope parsed
   (:mod:`mcpauth.runtime.envelope`): a method or tool name outside its alphabet → 400 at once, any
   other envelope error (a bad ``id``, an unknown tool ...) is answered after auth;
3. bearer token → :func:`mcpauth.identity.tokens.verify` → tenant → scopes → ``Principal``
   → 401/403;
   requests without a valid token are throttled per IP;
4. client policy and rate limit keyed on ``client_id`` → 403/429/503;
5. for ``tools/call``, ``resources/read`` and ``prompts/get``: the caller must hold the
   permissions of the tool, resource or prompt it names → 403 ``insufficient_scope`` step-up
   challenge (an unknown tool is refused here; an unknown resource or prompt gets FastMCP's own
   not-found error);
6. the request is served by :class:`mcpauth.runtime.transport.Transport` (the MCP SDK and FastMCP,
   one handler kernel for every protocol version); a call's audit row is written by the runner of
   its body before the reply exists, any other request's here, before the reply is sent with
   ``X-Request-ID`` and rate-limit headers.

The call's :class:`~mcpauth.runtime.context.CallContext` is bound for the whole request, so the tool
runner and ``current_principal()`` see the admitted caller. Every refusal is audited (except
IP-throttled floods, which is the point of the throttle).
"""

from __future__ import annotations

import logging
import uuid

from asgiref.sync import sync_to_async

from audit.models import Outcome
from audit.recorder import record
from mcpauth.admission import floods
from mcpauth.admission.gate import admit, admit_on_loop
from mcpauth.conf import MCPAuthSettings, get_settings
from mcpauth.edge.capture import (
    audit_failed,
    outcome_from_response,
    should_record,
    streamed,
    with_headers,
    write_row,
)
from mcpauth.edge.guards import bearer_token, check_host, read_body
from mcpauth.exceptions import MCPAuthError, RateLimited, RequestTimeout, error_response
from mcpauth.observability import request as observe
from mcpauth.runtime.context import CallContext, bind, refresh_connections
from mcpauth.runtime.envelope import parse_envelope
from mcpauth.runtime.transport import Transport, protocol_version
from mcpauth.types import Message, Receive, Scope, Send, client_ip, header_values

log = logging.getLogger(__name__)


class GovernedMCP:
    """The ``/mcp`` ASGI app: governance, then :class:`~mcpauth.runtime.transport.Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        conf = get_settings()
        ua = header_values(scope, b"user-agent")
        ctx = CallContext(
            request_id=uuid.uuid4().hex,
            client_ip=client_ip(scope, conf.trusted_proxies),
            user_agent=ua[0].decode("latin-1") if ua else "",
            http_method=scope["method"],
            method="" if scope["method"] == "POST" else f"HTTP {scope['method']}",
            protocol_version=protocol_version(scope) or "",
        )
        await self.record_flood_summaries()
        with bind(ctx):
            send = observe.request_started(ctx, scope, send)
            try:
                await self._handle(ctx, conf, scope, receive, send)
            finally:
                observe.request_finished(ctx)

    async def _handle(
        self, ctx: CallContext, conf: MCPAuthSettings, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            check_host(scope, conf)
            body = b""
            if scope["method"] == "POST":
                body = await read_body(receive, scope, conf)
                parse_envelope(ctx, body, conf)
            observe.request_parsed(ctx)
            raw = bearer_token(scope)
            if not await admit_on_loop(ctx, raw):
                await sync_to_async(admit, thread_sensitive=False)(ctx, raw, conf)
            if ctx.parse_error is not None:
                raise ctx.parse_error
        except MCPAuthError as exc:
            await self._refuse(exc, ctx, conf, send)
            return
        except Exception:
            log.exception("governance pipeline failed")
            await self._refuse(MCPAuthError("Internal error."), ctx, conf, send)
            return

        start: Message | None = None
        chunks: list[bytes] = []
        streaming = False

        async def capture(message: Message) -> None:
            # Hold the reply until its audit row is committed; a stream (SSE) passes through.
            nonlocal start, streaming
            if message["type"] == "http.response.start":
                start = message
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if ctype.startswith(b"text/event-stream"):
                    streaming = True
                    await send(with_headers(ctx, message, None))
            elif streaming:
                await send(await streamed(ctx, conf, message))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.transport.serve(ctx, scope, body, capture, receive)
        except Exception:
            log.exception("MCP server failed")
            if streaming:
                return
            start = None
        if streaming:
            if not ctx.recorded and should_record(ctx):
                await write_row(ctx, outcome=Outcome.OK, status=200)
            return
        if start is None:
            await self._refuse(MCPAuthError("Internal error."), ctx, conf, send)
            return
        status = int(start["status"])
        response_body = b"".join(chunks)
        if ctx.audit_failed:
            await self._refuse(audit_failed(), ctx, conf, send)
            return
        if not ctx.recorded and should_record(ctx):
            outcome, code, message = outcome_from_response(ctx, status, response_body)
            if not await write_row(
                ctx, outcome=outcome, status=status, error_code=code, error_message=message
            ):
                await self._refuse(audit_failed(), ctx, conf, send)
                return
        await send(with_headers(ctx, start, response_body))
        await send({"type": "http.response.body", "body": response_body})

    async def _refuse(
        self, exc: MCPAuthError, ctx: CallContext, conf: MCPAuthSettings, send: Send
    ) -> None:
        # the rest of a slow body is not awaited: the connection goes (also when throttled)
        close = isinstance(exc, RequestTimeout)
        if not ctx.recorded and ctx.principal is None and exc.status_code < 500:
            exc = await self._charge_ip(exc, ctx)
        observe.request_refused(ctx, exc)
        if not ctx.recorded:
            if (
                not await write_row(
                    ctx,
                    outcome=exc.outcome,
                    status=exc.status_code,
                    error_code=exc.reason[:64],
                    error_message=exc.description,
                )
                and exc.status_code < 500
            ):
                exc = audit_failed()
        status, headers, body = error_response(
            exc, resource_metadata=conf.resource_metadata_url, request_id=ctx.rpc_id
        )
        headers.append(("x-request-id", ctx.request_id))
        headers.append(("content-length", str(len(body))))
        if close:
            headers.append(("connection", "close"))
        if ctx.usage is not None and not isinstance(exc, RateLimited):
            headers.extend(ctx.usage.headers())
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _charge_ip(exc: MCPAuthError, ctx: CallContext) -> MCPAuthError:
        """A refusal before admission, against its IP's budget (``mcpauth.admission.floods``)."""
        active = floods.throttled(ctx.client_ip)
        if active is not None:  # over budget: counted here, no round trip, no audit row
            active.suppressed += 1
            ctx.recorded = True
            return floods.refusal(active)
        verdict = await sync_to_async(floods.charge, thread_sensitive=False)(ctx.client_ip)
        if verdict is floods.Verdict.SUPPRESS:
            ctx.recorded = True
        if verdict is not floods.Verdict.RECORD:
            return floods.refusal(floods.throttled(ctx.client_ip))
        return exc

    @staticmethod
    async def record_flood_summaries() -> None:
        """One row per IP and window whose refusals went unrecorded (at most once a second)."""
        summaries = floods.due_summaries()
        if not summaries:
            return

        def write() -> None:
            refresh_connections()
            for summary in summaries:
                try:
                    record(
                        outcome=Outcome.RATE_LIMITED,
                        status=429,
                        request_id=uuid.uuid4().hex,
                        method="throttle/ip",
                        client_ip=summary.ip if summary.ip != "-" else None,
                        error_code="ip_flood_summary",
                        error_message=(
                            f"{summary.suppressed} refused requests from this address between "
                            f"{summary.started.isoformat(timespec='seconds')} and "
                            f"{summary.ended.isoformat(timespec='seconds')} were not recorded "
                            "one by one."
                        ),
                    )
                except Exception:
                    log.exception("could not record a flood summary")

        await sync_to_async(write, thread_sensitive=False)()
