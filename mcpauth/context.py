"""Per-request state for one ``/mcp`` call, kept in the ASGI scope under ``SCOPE_KEY``.

The middleware fills it (identity, parsed JSON-RPC envelope); tools read the ``Principal`` from
it; whoever writes the audit row marks it ``recorded`` so each call has exactly one row.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, connection

if TYPE_CHECKING:
    from mcpauth.exceptions import MCPAuthError
    from mcpauth.ratelimit import Usage
    from mcpauth.tokens import Principal, VerifiedToken

SCOPE_KEY = "mcpauth.call"
#: Seconds between connection health checks (``SELECT 1``) per worker thread.
HEALTH_CHECK_INTERVAL = 1.0
_health = threading.local()


@dataclass
class CallContext:
    request_id: str
    client_ip: str
    user_agent: str
    started: float = field(default_factory=time.perf_counter)
    http_method: str = "POST"
    rpc_id: Any = None
    method: str = ""
    tool: str = ""
    arguments: Any = None
    is_notification: bool = False
    parse_error: MCPAuthError | None = None
    token: VerifiedToken | None = None
    principal: Principal | None = None
    usage: Usage | None = None
    #: True once the call's single audit row has been written (or deliberately skipped).
    recorded: bool = False
    #: True once the tool function itself started running.
    tool_ran: bool = False
    #: True when writing the audit row failed; the response becomes a server error.
    audit_failed: bool = False
    #: The worker thread whose DB connections were already refreshed for this request.
    db_thread: int | None = None

    def refresh_db(self) -> None:
        """``close_old_connections()`` once per request and worker thread.

        That drops connections that broke or outlived ``CONN_MAX_AGE``, and (with
        ``CONN_HEALTH_CHECKS``) marks the connection for a ``SELECT 1`` before its next query.
        The ping is skipped when this thread's connection was checked less than
        ``HEALTH_CHECK_INTERVAL`` seconds ago and has seen no error since: a connection that
        broke in that second fails one query, which flags it, and the next request reconnects.
        """
        ident = threading.get_ident()
        if self.db_thread == ident:
            return
        self.db_thread = ident
        close_old_connections()
        now = time.monotonic()
        if (
            connection.connection is not None
            and not connection.errors_occurred
            and now - getattr(_health, "checked_at", float("-inf")) < HEALTH_CHECK_INTERVAL
        ):
            connection.health_check_done = True  # type: ignore[attr-defined]
        else:
            _health.checked_at = now

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
            "arguments": self.arguments if self.method == "tools/call" else None,
        }
        if self.principal is not None:
            fields["principal"] = self.principal
        elif self.token is not None:
            fields.update(
                client_id=self.token.client_id,
                subject=self.token.subject,
                token_id=self.token.token_id,
                scopes=" ".join(sorted(self.token.scopes)),
            )
        return fields
