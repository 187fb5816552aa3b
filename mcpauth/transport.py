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

Both paths see the same requests: one whose ``id`` is not a string or an integer never gets
here (:mod:`mcpauth.envelope` refuses it, where the SDK's handshake-era transport would take it
for a notification), and a notification always takes the SDK's path (202, nothing run; the
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

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from asgiref.sync import sync_to_async
from fastmcp import FastMCP
from fastmcp.server.context import reset_transport, set_transport
from fastmcp.server.http import StreamableHTTPASGIApp, set_http_request
from mcp.server._streamable_http_modern import _mcp_param_rejection
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

from mcpauth.context import CallContext
from mcpauth.downstream import caller, records
from mcpauth.types import Message, Scope, Send, header

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
    """The dispatch context of one request answered with one JSON body.

    As on the SDK's stateless JSON-response transport there is no back channel: requests to the
    client raise ``NoBackChannelError``, and notifications scoped to the request (``ctx.info``,
    progress) have no wire in a JSON response, so they are dropped.
    """

    request_id: RequestId
    message_metadata: MessageMetadata
    transport: TransportContext = field(
        default_factory=lambda: TransportContext(kind=TRANSPORT_KIND, can_send_request=False)
    )
    progress_token: Any = None
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)
    can_send_request: bool = False

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        return None

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        return None


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

    def takes_single_exchange(self, scope: Scope, call: CallContext) -> bool:
        """Whether :meth:`serve_single_exchange` may answer (see module docstring)."""
        message = call.message
        if not self._fast() or message is None or "id" not in message:
            return False
        if message.get("method") == "subscriptions/listen":  # a notification stream
            return False
        has_json, _ = check_accept_headers(Request(scope))
        if not has_json:
            return False
        if is_handshake_era(scope):
            return _content_type_is_json(scope)
        return _modern_content_type_is_json(scope)

    async def serve(self, call: CallContext, scope: Scope, body: bytes, send: Send) -> None:
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
        try:
            with caller.bound(bearer), set_http_request(request):
                if scope.get("method") != "POST":
                    # GET/DELETE/...: FastMCP's own app answers (a stateless server has no
                    # GET stream: 405), so routing stays exactly plain FastMCP's.
                    await self.http_app(scope, receive, send)  # type: ignore[arg-type]
                elif self.takes_single_exchange(scope, call):
                    await self.serve_single_exchange(call, request, send)
                else:
                    await self.session_manager.handle_request(scope, receive, send)
        finally:
            reset_transport(transport_token)
            if call.outbound is not None:
                await sync_to_async(records.flush_remaining, thread_sensitive=False)(call)

    async def _hand_to_sdk(self, request: Request, send: Send) -> None:
        await self.session_manager.handle_request(request.scope, request.receive, send)

    async def serve_single_exchange(self, call: CallContext, request: Request, send: Send) -> None:
        assert call.message is not None
        try:
            message = jsonrpc_message_adapter.validate_python(call.message, by_name=False)
        except ValidationError:
            message = None
        if not isinstance(message, JSONRPCRequest):
            # Not a request after all: the SDK's transport gives its own answer.
            await self._hand_to_sdk(request, send)
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
                await self._hand_to_sdk(request, send)  # the SDK's own refusal
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
            progress_token=progress_token_from_params(message.params) if modern else None,
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
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _internal_error(message: JSONRPCRequest) -> ErrorData:
        log.exception("handler for %r raised", message.method)
        return ErrorData(code=INTERNAL_ERROR, message="Internal server error")
