"""Per-request state for one ``/mcp`` call, and how code inside a tool reaches it.

The governance pipeline (:mod:`mcpauth.edge.pipeline`) makes one :class:`CallContext` per request
and binds it to a context variable for the whole request, so it follows the call into FastMCP, into
the worker thread a sync tool runs in, and into ``sync_to_async`` (both copy the context). Tools
read the caller with :func:`current_principal`; whoever writes the call's audit row marks it
``recorded``, so each call has exactly one row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, connection

from mcpauth.exceptions import NoPrincipal

if TYPE_CHECKING:
    from mcpauth.exceptions import MCPAuthError
    from mcpauth.values import Principal, Usage, VerifiedToken

#: Seconds between connection health checks (``SELECT 1``) per worker thread.
HEALTH_CHECK_INTERVAL = 1.0
_health = threading.local()
_current: ContextVar[CallContext | None] = ContextVar("mcpauth_call", default=None)
#: The methods whose arguments an audit row keeps (redacted): a resource's are in its URI.
_WITH_ARGUMENTS = frozenset({"tools/call", "prompts/get"})
#: The key under which an audit row's ``arguments`` hold its links to other rows
#: (:attr:`CallContext.links`): no argument can be named so (not an identifier).
LINKS_KEY = "@mcpauth"


def _with_links(arguments: Any, links: dict[str, Any] | None) -> Any:
    """``arguments`` as stored: the server's links first (never cut by the item limit); a
    client's own ``@mcpauth`` argument is kept under another name, so a link is never forged."""
    if isinstance(arguments, dict) and LINKS_KEY in arguments:
        arguments = {
            (f"{LINKS_KEY} (sent by the client)" if k == LINKS_KEY else k): v
            for k, v in arguments.items()
        }
    if not links:
        return arguments
    if arguments is None:
        return {LINKS_KEY: links}
    if isinstance(arguments, dict):
        return {LINKS_KEY: links, **arguments}
    return {LINKS_KEY: links, "arguments": arguments}


def refresh_connections() -> None:
    """``close_old_connections()`` for this thread, at most once a second while all is well.

    The ``/mcp`` path bypasses Django's request handler, so its ``request_started`` signal never
    fires: this is what it would do. It drops connections that broke or outlived
    ``CONN_MAX_AGE``, and (with ``CONN_HEALTH_CHECKS``) marks the connection for a ``SELECT 1``
    before its next query. While this thread's connection is open, was checked less than
    ``HEALTH_CHECK_INTERVAL`` seconds ago and has seen no error since, nothing is done: a
    connection that breaks in that second fails one query, which flags it
    (``errors_occurred``), and the next request reconnects; ``CONN_MAX_AGE`` is honoured to
    within that second.
    """
    now = time.monotonic()
    if (
        connection.connection is not None
        and not connection.errors_occurred
        and now - getattr(_health, "checked_at", float("-inf")) < HEALTH_CHECK_INTERVAL
    ):
        return
    close_old_connections()
    _health.checked_at = now


@dataclass
class CallContext:
    request_id: str
    client_ip: str
    user_agent: str
    started: float = field(default_factory=time.perf_counter)
    http_method: str = "POST"
    rpc_id: Any = None
    method: str = ""
    #: The audit row's ``tool``: the tool's or prompt's name, or the resource URI as
    #: :func:`~mcpauth.runtime.components.uri_for_audit` keeps it.
    tool: str = ""
    arguments: Any = None
    #: The registry spec the call names (``tools/call``, ``resources/read``, ``prompts/get``),
    #: when it names a registered one: its permissions are checked before FastMCP runs it.
    component: Any = None
    is_notification: bool = False
    #: The MCP protocol version the request speaks (header, else the handshake-era default).
    protocol_version: str = ""
    parse_error: MCPAuthError | None = None
    token: VerifiedToken | None = None
    #: The tenant's external id once resolved, even when the call is then refused.
    tenant: str = ""
    principal: Principal | None = None
    usage: Usage | None = None
    #: The decoded JSON-RPC body (a dict), when it parsed.
    message: dict[str, Any] | None = None
    #: True once the call's single audit row has been written (or deliberately skipped).
    recorded: bool = False
    #: True once the governed body (tool, resource or prompt function) started running.
    tool_ran: bool = False
    #: True when writing the audit row failed; the response becomes a server error.
    audit_failed: bool = False
    #: The worker thread whose DB connections were already refreshed for this request.
    db_thread: int | None = None
    #: The W3C trace id (32 hex digits) of the request's trace, or ``""``: the request span's
    #: when tracing is on, else the caller's ``traceparent`` (header or ``params._meta``).
    trace_id: str = ""
    #: The HTTP status the response started with (0 until then).
    status: int = 0
    #: The outcome of the call's audit row, once written (``mcpauth.observability``).
    outcome: str = ""
    #: Per-request logs/metrics/traces state (``mcpauth.observability.request.Observation``).
    observation: Any = None
    #: Outbound calls not yet in the audit trail (``mcpauth.downstream.records.OutboundLog``).
    outbound: Any = None
    #: This row's links to others, stored in its ``arguments`` under :data:`LINKS_KEY`: the
    #: round a multi-round-trip call continues, the notification that cancelled a call, the
    #: call a ``notifications/cancelled`` names.
    links: dict[str, Any] | None = None
    #: Why the client gave up on the call (``"disconnected"``, ``"notifications/cancelled"``);
    #: empty while it has not (``mcpauth.runtime.transport``).
    cancelled: str = ""
    #: Asks, without waiting, whether the client has gone away (``mcpauth.runtime.cancellation``).
    client_gone: Callable[[], bool] | None = None

    def refresh_db(self) -> None:
        """:func:`refresh_connections` once per request and worker thread."""
        ident = threading.get_ident()
        if self.db_thread == ident:
            return
        self.db_thread = ident
        refresh_connections()

    def link(self, **links: Any) -> None:
        """Add links to this call's audit row (see :attr:`links`)."""
        self.links = {**(self.links or {}), **links}

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def audit_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "tool": self.tool,
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
            "duration_ms": self.elapsed_ms(),
            "arguments": _with_links(
                self.arguments if self.method in _WITH_ARGUMENTS else None, self.links
            ),
            "trace_id": self.trace_id,
        }
        if self.principal is not None:
            fields["principal"] = self.principal
        elif self.token is not None:  # verified, then refused (tenant, ...): its issuer is known
            fields.update(
                issuer=self.token.issuer,
                client_id=self.token.client_id,
                subject=self.token.subject,
                token_id=self.token.token_id,
                scopes=" ".join(sorted(self.token.scopes)),
                tenant=self.tenant,
            )
        return fields


@contextmanager
def bind(ctx: CallContext) -> Iterator[CallContext]:
    """Make ``ctx`` the current call for the duration of the block."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def get_call() -> CallContext | None:
    """The current ``/mcp`` call, or ``None`` outside one."""
    return _current.get()


def current_call() -> CallContext:
    """The current ``/mcp`` call; raise :class:`~mcpauth.exceptions.NoPrincipal` outside one."""
    ctx = _current.get()
    if ctx is None:
        raise NoPrincipal("No governed MCP call is in progress.")
    return ctx


def current_principal() -> Principal:
    """The caller of the governed tool that is running (sync or async).

    Raises :class:`~mcpauth.exceptions.NoPrincipal` outside a governed call: there is never an
    implicit or default principal.
    """
    principal = current_call().principal
    if principal is None:
        raise NoPrincipal("The current MCP call has no authenticated principal.")
    return principal
