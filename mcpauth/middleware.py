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

import ipaddress
import json
import logging
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.http.request import split_domain_port, validate_host

from audit.conf import get_settings as audit_settings
from audit.models import Outcome
from audit.recorder import record
from mcpauth.admission import floods, ratelimit, revocation
from mcpauth.admission.localcache import CacheMiss, cache_only
from mcpauth.conf import MCPAuthSettings, get_settings, origin_key
from mcpauth.exceptions import (
    HostNotAllowed,
    InsufficientScope,
    InvalidToken,
    MCPAuthError,
    MissingToken,
    RateLimited,
    RequestTimeout,
    error_response,
)
from mcpauth.identity import scopes
from mcpauth.identity.tokens import principal_for, verify
from mcpauth.observability import request as observe
from mcpauth.observability.tracing import step
from mcpauth.runtime.context import CallContext, bind, refresh_connections
from mcpauth.runtime.envelope import ALWAYS_AUDITED, parse_envelope, read_body
from mcpauth.runtime.streaming import sse_event, sse_reply
from mcpauth.runtime.transport import Transport, protocol_version
from mcpauth.types import Message, Receive, Scope, Send, client_ip, header_values
from mcpauth.values import Principal

log = logging.getLogger(__name__)


def bearer_token(scope: Scope) -> str | None:
    """The bearer token, or ``None`` when absent; raise for ambiguous or malformed headers."""
    values = header_values(scope, b"authorization")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidToken("Multiple Authorization headers.", reason="malformed")
    try:
        value = values[0].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidToken("Malformed Authorization header.", reason="malformed") from None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or " " in token:
        raise InvalidToken("Malformed Authorization header.", reason="malformed")
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(scope: Scope, conf: MCPAuthSettings) -> None:
    """DNS-rebinding protection: a ``Host`` this server serves, and an allowed ``Origin``.

    ``Host`` follows Django's ``ALLOWED_HOSTS`` rules (so ``LOCALHOST`` and ``localhost.`` are
    ``localhost``: the same name, which an attacker cannot rebind). An ``Origin``, when sent,
    must match scheme, host and port of ``BASE_URL`` or of an ``MCPAUTH_ALLOWED_ORIGINS`` entry;
    with ``MCPAUTH_LOOPBACK_ORIGINS_ANY_PORT`` and a loopback ``BASE_URL``, any loopback origin
    (any port) is allowed too; with ``ALLOWED_HOSTS = ["*"]``, the request's own origin.
    """
    hosts = list(conf.allowed_hosts) or [".localhost", "127.0.0.1", "[::1]"]
    host_values = header_values(scope, b"host")
    host = host_values[0].decode("latin-1") if host_values else ""
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, hosts):
        raise HostNotAllowed("Host not allowed.", reason="bad_host")
    origins = header_values(scope, b"origin")
    if not origins:
        return
    key = origin_key(origins[0].decode("latin-1"))
    if key is not None:
        if key in conf.allowed_origin_keys:
            return
        base = origin_key(conf.base_url)
        if (
            conf.loopback_origins_any_port
            and base is not None
            and _is_loopback(base[1])
            and _is_loopback(key[1])
        ):
            return
        if "*" in hosts and key == origin_key(f"{scope.get('scheme', 'http')}://{host}"):
            return
    raise HostNotAllowed("Origin not allowed.", reason="bad_origin")


def admit(ctx: CallContext, raw: str | None, conf: MCPAuthSettings) -> Principal:
    """Steps 3-5 (sync: may touch the DB, cache and JWKS). Fills ``ctx``.

    The per-IP refusal budget (``mcpauth.admission.floods``) is not consulted here: a valid token is
    admitted whatever other requests from its address did. From an address over its budget, a
    token is still checked, but an unknown key id triggers no JWKS refetch.
    """
    observe.admission_redone(ctx)
    ctx.refresh_db()
    revocation.check()
    if raw is None:
        raise MissingToken(scopes=scopes.challenge_scopes())
    with step("mcp.token"):
        token = verify(raw, refetch=floods.throttled(ctx.client_ip) is None)
    ctx.token = token
    try:
        with step("mcp.tenant_scope"):
            principal = principal_for(token)
    except MCPAuthError as exc:
        ctx.tenant = exc.tenant
        raise
    ctx.principal = principal
    with step("mcp.rate_limit"):
        if not ctx.is_notification and ctx.http_method == "POST":
            ctx.usage = ratelimit.hit(principal)
        else:
            ratelimit.rate_for(principal)  # a blocked client is refused on every request
    if ctx.parse_error is None and not ctx.is_notification:
        authorize(ctx, principal)  # here, in a thread: the challenge may read the scope map
    return principal


async def admit_on_loop(ctx: CallContext, raw: str | None) -> bool:
    """:func:`admit` without leaving the event loop, when nothing it needs takes I/O.

    The common case (a token already verified, its tenant, scopes and client policy cached, the
    count in Redis or in process) costs a thread hop less this way. Anything that would need a
    database query, a JWKS fetch or a blocking cache raises ``CacheMiss`` inside
    :func:`~mcpauth.admission.localcache.cache_only` before anything is counted, and so does any
    refusal before the count: the caller then runs :func:`admit` in a thread, which decides it all
    again (and a refusal is then recorded exactly as on that path). Returns whether it admitted.
    """
    if raw is None or ctx.is_notification or ctx.http_method != "POST":
        return False
    try:
        with cache_only():
            revocation.check()  # due every half second: then the thread path reads it
            with step("mcp.token"):
                token = verify(raw)
            with step("mcp.tenant_scope"):
                principal = principal_for(token)
            # the policy is cached, or CacheMiss; counted with this very rate below, so a cache
            # cleared meanwhile (a config change) cannot turn the count into a CacheMiss
            rate = ratelimit.rate_for(principal)
    except (CacheMiss, MCPAuthError, SynchronousOnlyOperation):
        return False
    ctx.token = token
    ctx.principal = principal  # a refusal of the count below is recorded with the caller
    try:
        with cache_only(), step("mcp.rate_limit"):
            # refusals from here on are final; a CacheMiss comes before anything is counted
            ctx.usage = await ratelimit.ahit(principal, rate)
    except CacheMiss:
        return False  # admit() in a thread decides again (and sets the caller again)
    spec = ctx.component
    if (
        spec is not None
        and ctx.parse_error is None
        and not ctx.is_notification
        and not principal.has_perms(spec.permissions)
    ):
        # the step-up challenge reads the scope map: build it where I/O is allowed
        await sync_to_async(authorize, thread_sensitive=False)(ctx, principal)
    return True


def authorize(ctx: CallContext, principal: Principal) -> None:
    """The tool, resource or prompt the call names needs permissions the caller lacks: 403
    with the ``insufficient_scope`` step-up challenge naming the scopes that would grant them.

    A call naming nothing registered passes (an unknown tool was refused while parsing; an
    unknown resource or prompt gets FastMCP's own not-found error).
    """
    spec = ctx.component
    if spec is not None and not principal.has_perms(spec.permissions):
        needed = scopes.scopes_for(spec.permissions)
        raise InsufficientScope(
            f"The '{spec.key}' {spec.kind} needs scope: {' '.join(needed) or '(none mapped)'}.",
            scopes=needed,
        )


def _never_runs(ctx: CallContext) -> bool:
    """A request method sent as a notification (no ``id``): the server must not answer it, and
    the MCP SDK accepts it (202) without running anything."""
    return ctx.is_notification and not ctx.method.startswith("notifications/")


def _outcome_from_response(ctx: CallContext, status: int, body: bytes) -> tuple[str, str, str]:
    """``(outcome, error_code, message)`` for a response FastMCP produced."""
    if status >= 500:
        return Outcome.SERVER_ERROR, f"http_{status}", ""
    if status >= 400:
        return Outcome.INVALID_REQUEST, f"http_{status}", ""
    if _never_runs(ctx):
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


def _audit_failed() -> MCPAuthError:
    """The 500 a call gets when its audit row could not be written (no reply without one)."""
    return MCPAuthError("Internal error: audit write failed.")


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
                    await send(self._with_headers(ctx, message, None))
            elif streaming:
                await send(await self._streamed(ctx, conf, message))
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
            if not ctx.recorded and self._should_record(ctx):
                await self._record(ctx, outcome=Outcome.OK, status=200)
            return
        if start is None:
            await self._refuse(MCPAuthError("Internal error."), ctx, conf, send)
            return
        status = int(start["status"])
        response_body = b"".join(chunks)
        if ctx.audit_failed:
            await self._refuse(_audit_failed(), ctx, conf, send)
            return
        if not ctx.recorded and self._should_record(ctx):
            outcome, code, message = _outcome_from_response(ctx, status, response_body)
            if not await self._record(
                ctx, outcome=outcome, status=status, error_code=code, error_message=message
            ):
                await self._refuse(_audit_failed(), ctx, conf, send)
                return
        await send(self._with_headers(ctx, start, response_body))
        await send({"type": "http.response.body", "body": response_body})

    async def _streamed(self, ctx: CallContext, conf: MCPAuthSettings, message: Message) -> Message:
        """A chunk of a streamed (SSE) reply: the one that carries the JSON-RPC reply goes out
        after the row, as a JSON reply does, and is the 500's error if the row failed."""
        if ctx.recorded and not ctx.audit_failed:
            return message
        reply = sse_reply(message.get("body", b""))
        if reply is None:
            return message
        if ctx.audit_failed:
            exc = _audit_failed()
            await self._record(ctx, outcome=exc.outcome, status=200, error_code=exc.reason[:64])
            _, _, body = error_response(
                exc, resource_metadata=conf.resource_metadata_url, request_id=ctx.rpc_id
            )
            return {**message, "body": sse_event(body)}
        if self._should_record(ctx):
            outcome, code, text = _outcome_from_response(ctx, 200, reply)
            await self._record(
                ctx, outcome=outcome, status=200, error_code=code, error_message=text
            )
        return message

    @staticmethod
    def _with_headers(ctx: CallContext, start: Message, body: bytes | None) -> Message:
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

    @staticmethod
    def _should_record(ctx: CallContext) -> bool:
        return ctx.method in ALWAYS_AUDITED or audit_settings().record_all_methods

    @staticmethod
    async def _record(ctx: CallContext, **fields: Any) -> bool:
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
                not await self._record(
                    ctx,
                    outcome=exc.outcome,
                    status=exc.status_code,
                    error_code=exc.reason[:64],
                    error_message=exc.description,
                )
                and exc.status_code < 500
            ):
                exc = _audit_failed()
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
