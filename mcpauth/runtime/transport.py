"""Serving an admitted ``/mcp`` request: the MCP SDK's transport, minus per-request overhead.

Every request reaches the same handler kernel: the MCP SDK's ``serve_one`` over FastMCP's
low-level server, so FastMCP's middleware, tool runner and result serializer run for every
tool on every protocol version. Only how the request gets there differs:

* **Anything but POST** goes to FastMCP's Starlette app (a stateless server answers GET with
  405), as on plain FastMCP.
* **A single JSON-RPC request** with JSON in and accepted is answered in one step,
  :meth:`Transport.serve_single_exchange`, with the SDK's own pieces:

  - handshake era (no or a handshake-era ``MCP-Protocol-Version``): what the SDK's stateless
    *transport* does, without building a transport, a task and a dispatcher over memory streams
    for every request (about half a millisecond per call, ``make bench``): the SDK's
    ``jsonrpc_message_adapter`` validates the message, a born-ready ``Connection.from_envelope``
    carries the header's version (or the spec's default), and the reply is serialized as that
    transport serializes it (HTTP 200 for every JSON-RPC answer);
  - 2026-07-28: what the SDK's single-exchange entry (``handle_modern_request``) does in JSON
    mode, minus re-reading and re-parsing the body: the duplicated-routing-header check, the
    header/body/``_meta`` agreement ladder (``classify_inbound_request``), the ``Mcp-Param-*``
    check, a ``Connection`` from the request's envelope, and the SDK's status table for errors.
    Any request the SDK would refuse before dispatch is handed to the SDK itself, so every such
    refusal is the SDK's own answer.

  Both then call ``serve_one``. The one deliberate difference: on the handshake era, an
  exception no handler mapped is the generic ``-32603`` of the modern entry, where the legacy
  dispatcher sends ``code=0`` with the exception's text.
* **Everything else** (notifications, batches, ``subscriptions/listen``, SSE-only clients ...)
  goes to the SDK's session manager (``StreamableHTTPSessionManager.handle_request``), exactly
  as FastMCP's app would route it. ``MCPAUTH_FAST_TRANSPORT = False`` sends every POST there.

**Notifications** (:mod:`mcpauth.runtime.streaming`). A client that accepts ``text/event-stream``
gets the notifications a body sends about its request (progress, log messages) on both eras: the
single exchange turns its reply into an SSE stream at the first one (a call that sends none is
still answered with one JSON body), and the SDK's path takes the SDK's transports in their SSE
mode (``json_response=False``), as plain FastMCP's default HTTP app would. A JSON-only client
gets one JSON body, its notifications dropped, as before.

**Cancellation** (:mod:`mcpauth.runtime.cancellation`). A governed call runs beside a watcher: when
its client goes away, or (handshake era) posts ``notifications/cancelled`` for it to any worker, the
call is cancelled as the SDK's SSE transport cancels it, and its row says ``cancelled``. The
handshake era answers a cancelled request that is still connected with ``-32800 Request
cancelled``, as the SDK's 2025-era transport does.

**The caller for the SDK.** The admitted ``Principal`` is also the SDK's authenticated user
(``scope["user"]`` and its auth context variable, so FastMCP's ``get_access_token()`` sees the
caller): client id, subject, scopes, ``iss`` and the tenant in ``claims``. Its ``token`` is the
token's id (``jti`` or fingerprint), never the bearer: a body that wants to call another
system uses ``mcpauth.downstream``.

Both paths see the same requests: one whose ``id`` is not a string or an integer never gets
here (:mod:`mcpauth.runtime.envelope` refuses it, where the SDK's handshake-era transport would take
it for a notification), and a notification always takes the SDK's path (202, nothing run; the
governance layer records a request method sent that way as ``not_executed``).

In all cases the request first gets what FastMCP's ``RequestContextMiddleware`` gives it (the
HTTP request in FastMCP's context variable, the transport type), so ``get_http_request()`` and
``Context`` work in tools as they do on plain FastMCP, minus the ``Authorization`` header: no
tool can read (and so pass through) the caller's bearer token; the platform keeps it for a
declared token exchange or forward (:mod:`mcpauth.downstream.caller`). Outbound calls a tool
made and that are not yet in the audit trail are written when the request is served
(:mod:`mcpauth.downstream.records`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from asgiref.sync import sync_to_async
from fastmcp import FastMCP
from fastmcp.server.auth.auth import AccessToken
from fastmcp.server.context import reset_transport, set_transport
from fastmcp.server.http import StreamableHTTPASGIApp, set_http_request
from mcp.server._streamable_http_modern import _mcp_param_rejection
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.connection import Connection
from mcp.server.runner import modern_error_data, serve_one
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp.shared.jsonrpc_dispatcher import (
    handler_exception_to_error_data,
    progress_token_from_params,
)
from mcp.shared.message import MessageMetadata, ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)
from mcp_types.jsonrpc import jsonrpc_message_adapter
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request

from mcpauth.conf import get_settings
from mcpauth.downstream import caller, records
from mcpauth.identity.tokens import Principal
from mcpauth.runtime import cancellation
from mcpauth.runtime.context import CallContext
from mcpauth.runtime.streaming import ReplyStream
from mcpauth.types import Message, Receive, Scope, Send, header

log = logging.getLogger(__name__)

TRANSPORT_KIND: Literal["streamable-http"] = "streamable-http"


def protocol_version(scope: Scope) -> str | None:
    return header(scope, b"mcp-protocol-version")


def is_handshake_era(scope: Scope) -> bool:
    version = protocol_version(scope)
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


def _content_type_is_json(scope: Scope) -> bool:
    """The legacy transport's rule (``_check_content_type``)."""
    value = header(scope, b"content-type") or ""
    return any(part.strip() == "application/json" for part in value.split(";")[0].split(","))


#: The 2026-07-28 entry's own check (``handle_modern_request`` refuses other POSTs with 400).
_MODERN_SECURITY = TransportSecurityMiddleware()


def _modern_content_type_is_json(scope: Scope) -> bool:
    return _MODERN_SECURITY._validate_content_type(header(scope, b"content-type"))


@dataclass
class SingleExchangeContext:
    """The dispatch context of one request answered in one exchange.

    As on the SDK's stateless transports there is no back channel: requests to the client raise
    ``NoBackChannelError``. Notifications scoped to the request (``ctx.info``, progress) go to
    the request's :class:`~mcpauth.runtime.streaming.ReplyStream`: SSE frames for a client that
    accepts them, nothing for a JSON-only one.
    """

    request_id: RequestId
    message_metadata: MessageMetadata
    transport: TransportContext = field(
        default_factory=lambda: TransportContext(kind=TRANSPORT_KIND, can_send_request=False)
    )
    progress_token: Any = None
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)
    can_send_request: bool = False
    stream: ReplyStream | None = None

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        if self.stream is not None:
            await self.stream.notify(method, params)

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """As the SDK's dispatch contexts: a ``notifications/progress`` for the request's token."""
        if self.progress_token is None:
            return
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.notify("notifications/progress", params)


def authenticated_user(principal: Principal) -> AuthenticatedUser:
    """The admitted caller as the MCP SDK's authenticated user (see the module docstring)."""
    claims: dict[str, Any] = {"tenant": principal.tenant.external_id}
    if principal.issuer:
        claims["iss"] = principal.issuer
    return AuthenticatedUser(
        AccessToken(
            token=principal.token_id,
            client_id=principal.client_id,
            scopes=sorted(principal.scopes),
            subject=principal.subject or None,
            resource=get_settings().resource_url,
            claims=claims,
        )
    )


class Transport:
    """Serves admitted requests for one FastMCP server and its Starlette app's lifespan."""

    def __init__(self, server: FastMCP[Any], http_app: Starlette, *, fast: Callable[[], bool]):
        self.server = server
        self.http_app = http_app
        self._fast = fast
        endpoints: list[StreamableHTTPASGIApp] = [
            endpoint
            for route in http_app.routes
            if isinstance(endpoint := getattr(route, "endpoint", None), StreamableHTTPASGIApp)
        ]
        if len(endpoints) != 1:
            raise RuntimeError("FastMCP's http_app has no single streamable-HTTP endpoint")
        self._endpoint: StreamableHTTPASGIApp = endpoints[0]

    @property
    def session_manager(self) -> StreamableHTTPSessionManager:
        manager = self._endpoint.session_manager
        if manager is None:
            raise RuntimeError(
                "The MCP session manager is not running: the ASGI lifespan did not start "
                "(run uvicorn with lifespan enabled)."
            )
        return manager

    def takes_single_exchange(self, scope: Scope, call: CallContext, accepts_json: bool) -> bool:
        """Whether :meth:`serve_single_exchange` may answer (see module docstring)."""
        message = call.message
        if not self._fast() or message is None or "id" not in message:
            return False
        if message.get("method") == "subscriptions/listen":  # a notification stream
            return False
        if not accepts_json:
            return False
        if is_handshake_era(scope):
            return _content_type_is_json(scope)
        return _modern_content_type_is_json(scope)

    async def serve(
        self,
        call: CallContext,
        scope: Scope,
        body: bytes,
        send: Send,
        client_receive: Receive | None = None,
    ) -> None:
        """Serve an admitted request; ``client_receive`` (the server's own ``receive``, once the
        body is read) tells a governed call that its client went away."""
        replayed = False

        async def receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        scope, bearer = caller.without_authorization(scope)
        request = Request(scope, receive)
        transport_token = set_transport(TRANSPORT_KIND)
        user_token = None
        if call.principal is not None:
            scope["user"] = user = authenticated_user(call.principal)
            user_token = auth_context_var.set(user)
        try:
            with caller.bound(bearer), set_http_request(request):
                if scope.get("method") != "POST":
                    # GET/DELETE/...: FastMCP's own app answers (a stateless server has no
                    # GET stream: 405), so routing stays exactly plain FastMCP's.
                    await self.http_app(scope, receive, send)  # type: ignore[arg-type]
                    return
                has_json, has_sse = check_accept_headers(request)
                stream = ReplyStream(send, sse=has_sse)
                if call.method == cancellation.NOTIFIED and is_handshake_era(scope):
                    await cancellation.notified(call)
                if (
                    client_receive is None
                    or call.method not in cancellation.WATCHED
                    or call.is_notification
                ):
                    await self._route(call, request, stream, has_json)
                    return
                handshake = is_handshake_era(scope)
                async with cancellation.watching(
                    call, client_receive, stream, handshake_era=handshake
                ):
                    await self._route(call, request, stream, has_json)
                if call.cancelled:
                    await cancellation.settle(call, stream, handshake_era=handshake)
        finally:
            if user_token is not None:
                auth_context_var.reset(user_token)
            reset_transport(transport_token)
            if call.outbound is not None:
                await sync_to_async(records.flush_remaining, thread_sensitive=False)(call)

    async def _route(
        self, call: CallContext, request: Request, stream: ReplyStream, has_json: bool
    ) -> None:
        if self.takes_single_exchange(request.scope, call, has_json):
            await self.serve_single_exchange(call, request, stream)
        else:
            await self._hand_to_sdk(call, request, stream)

    async def _hand_to_sdk(self, call: CallContext, request: Request, send: ReplyStream) -> None:
        """The SDK's own transports; in their SSE mode for a client that accepts SSE, as
        FastMCP's default http_app (``json_response=False``) would answer it. On the handshake
        era that mode streams every answer, so it is taken only where something can stream:
        a call that runs a body. On 2026-07-28 it streams only once something is notified."""
        manager = self.session_manager
        if (
            send.sse
            and manager.json_response
            and (not is_handshake_era(request.scope) or call.method in cancellation.WATCHED)
        ):
            twin = copy.copy(manager)  # the same task group, lifespan and server
            twin.json_response = False
            await twin._handle_request(request.scope, request.receive, send)
            return
        await manager.handle_request(request.scope, request.receive, send)

    async def serve_single_exchange(
        self, call: CallContext, request: Request, stream: ReplyStream
    ) -> None:
        assert call.message is not None
        try:
            message = jsonrpc_message_adapter.validate_python(call.message, by_name=False)
        except ValidationError:
            message = None
        if not isinstance(message, JSONRPCRequest):
            # Not a request after all: the SDK's transport gives its own answer.
            await self._hand_to_sdk(call, request, stream)
            return
        manager = self.session_manager
        modern = not is_handshake_era(request.scope)
        if modern:
            headers = request.headers
            verdict = classify_inbound_request(call.message, headers=dict(headers))
            if (
                find_duplicated_routing_header(headers.items()) is not None
                or isinstance(verdict, InboundLadderRejection)
                or await _mcp_param_rejection(
                    self.server._mcp_server, request, message, verdict, manager._lifespan_state
                )
                is not None
            ):
                await self._hand_to_sdk(call, request, stream)  # the SDK's own refusal
                return
            connection = Connection.from_envelope(
                verdict.protocol_version, verdict.client_info, verdict.client_capabilities
            )
            transport = TransportContext(
                kind=TRANSPORT_KIND, can_send_request=False, headers=headers
            )
        else:
            connection = Connection.from_envelope(
                protocol_version(request.scope) or DEFAULT_NEGOTIATED_VERSION, None, None
            )
            transport = TransportContext(kind=TRANSPORT_KIND, can_send_request=False)
        dctx = SingleExchangeContext(
            request_id=message.id,
            message_metadata=ServerMessageMetadata(request_context=request, can_send_request=False),
            transport=transport,
            progress_token=progress_token_from_params(message.params),
            stream=stream,
        )
        reply: JSONRPCResponse | JSONRPCError
        try:
            result = await serve_one(
                self.server._mcp_server,
                dctx,
                message.method,
                message.params,
                connection=connection,
                lifespan_state=manager._lifespan_state,
            )
            reply = JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)
        except Exception as exc:
            if modern:
                error = modern_error_data(exc)
            else:
                error = handler_exception_to_error_data(exc) or self._internal_error(message)
            reply = JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
        status = 200
        if modern:
            # as the SDK's modern entry writes it: its status table, exclude_none
            if isinstance(reply, JSONRPCError):
                status = ERROR_CODE_HTTP_STATUS.get(reply.error.code, 200)
            body = json.dumps(
                reply.model_dump(mode="json", by_alias=True, exclude_none=True),
                separators=(",", ":"),
            ).encode()
        else:
            # as the SDK's stateless transport writes it: exclude_unset, always 200
            body = reply.model_dump_json(by_alias=True, exclude_unset=True).encode()
        await stream.reply(body, status)

    @staticmethod
    def _internal_error(message: JSONRPCRequest) -> ErrorData:
        log.exception("handler for %r raised", message.method)
        return ErrorData(code=INTERNAL_ERROR, message="Internal server error")
