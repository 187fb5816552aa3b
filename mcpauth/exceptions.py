"""Typed errors that carry their protocol data, and the one place that puts them on the wire.

Every refusal on ``/mcp`` is an :class:`MCPAuthError` subclass. Code decides on the class and
its attributes (``error``, ``status_code``, ``reason``), never on the message text.
:func:`error_response` turns one into an HTTP status, headers (``WWW-Authenticate``,
``Retry-After``, rate-limit headers) and a JSON-RPC error body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


class MCPAuthError(Exception):
    """Base class. Subclasses set the class attributes; instances may refine them."""

    status_code: ClassVar[int] = 500
    #: OAuth / RFC 6750 error code (``invalid_token``, ``insufficient_scope`` ...).
    error: ClassVar[str] = "server_error"
    #: Audit outcome (``audit.models.Outcome`` value) recorded for this refusal.
    outcome: ClassVar[str] = "server_error"
    #: JSON-RPC error code used in the response body.
    jsonrpc_code: ClassVar[int] = -32603
    default_description: ClassVar[str] = "Internal error."
    #: Audit ``error_code`` when no specific reason is given.
    default_reason: ClassVar[str] = ""

    def __init__(
        self,
        description: str | None = None,
        *,
        reason: str = "",
        retry_after: int | None = None,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        tenant: str = "",
    ) -> None:
        self.description = description or self.default_description
        #: Machine-readable reason for the audit log (``expired``, ``bad_signature`` ...).
        self.reason = reason or self.default_reason or self.error or "server_error"
        self.retry_after = retry_after
        #: Scopes to put in a ``WWW-Authenticate`` challenge.
        self.scopes = tuple(scopes)
        self.extra_headers = dict(headers or {})
        #: The tenant (external id) the refusal concerns, when it was resolved (audit rows).
        self.tenant = tenant
        super().__init__(self.description)


class MissingToken(MCPAuthError):
    """No credentials, or not the Bearer scheme: a bare challenge (RFC 6750 §3.1)."""

    status_code = 401
    error = ""
    outcome = "unauthenticated"
    jsonrpc_code = -32001
    default_description = "Authentication required: send a Bearer access token."
    default_reason = "missing_token"


class InvalidToken(MCPAuthError):
    status_code = 401
    error = "invalid_token"
    outcome = "unauthenticated"
    jsonrpc_code = -32001
    default_description = "The access token is invalid."


class InsufficientScope(MCPAuthError):
    status_code = 403
    error = "insufficient_scope"
    outcome = "denied"
    jsonrpc_code = -32003
    default_description = "The access token lacks the scope this tool needs."


class AccessDenied(MCPAuthError):
    """Authenticated, but refused: no tenant, suspended tenant, blocked client."""

    status_code = 403
    error = "access_denied"
    outcome = "denied"
    jsonrpc_code = -32003
    default_description = "Access denied."


class RateLimited(MCPAuthError):
    status_code = 429
    error = "rate_limited"
    outcome = "rate_limited"
    jsonrpc_code = -32029
    default_description = "Rate limit exceeded; retry later."


class ServiceUnavailable(MCPAuthError):
    status_code = 503
    error = "temporarily_unavailable"
    outcome = "server_error"
    jsonrpc_code = -32603
    default_description = "A backing service is unavailable; retry later."


class InvalidRequest(MCPAuthError):
    status_code = 400
    error = "invalid_request"
    outcome = "invalid_request"
    jsonrpc_code = -32600
    default_description = "Invalid request."


class ParseError(InvalidRequest):
    jsonrpc_code = -32700
    default_description = "Parse error: the body is not valid JSON."


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_description = "Request body too large."


class RequestTimeout(InvalidRequest):
    """The body did not arrive within ``MCPAUTH_BODY_TIMEOUT`` (a slow or stalled client)."""

    status_code = 408
    default_description = "Request body not received in time."
    default_reason = "body_timeout"


class InvalidMethod(InvalidRequest):
    """A ``method`` outside the JSON-RPC method alphabet: refused before admission."""

    default_description = "Invalid request: not a JSON-RPC method name."
    default_reason = "invalid_method"


class InvalidToolName(InvalidRequest):
    """A ``tools/call`` name outside the MCP tool-name alphabet: refused before admission.

    ``-32602`` (invalid params), as an unknown tool is, with the status the MCP SDK's table gives
    that code (400).
    """

    jsonrpc_code = -32602
    default_description = "Invalid params: not an MCP tool name."
    default_reason = "invalid_tool_name"


class MethodNotFound(InvalidRequest):
    """JSON-RPC level: answered with HTTP 200, as MCP servers answer protocol errors."""

    status_code = 200
    jsonrpc_code = -32601
    default_description = "Method not found."


class UnknownTool(InvalidRequest):
    status_code = 200
    jsonrpc_code = -32602
    default_description = "Unknown tool."


class HostNotAllowed(MCPAuthError):
    """DNS-rebinding protection: a Host or Origin this server does not serve."""

    status_code = 403
    error = "invalid_request"
    outcome = "invalid_request"
    jsonrpc_code = -32600
    default_description = "Host or Origin not allowed."


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def www_authenticate(exc: MCPAuthError, *, resource_metadata: str) -> str | None:
    """The ``WWW-Authenticate`` value for 401/403 challenges, else ``None``."""
    if not isinstance(exc, MissingToken | InvalidToken | InsufficientScope):
        return None
    params: list[str] = []
    if exc.error:
        params.append(f'error="{exc.error}"')
        params.append(f'error_description="{_quote(exc.description)}"')
    if exc.scopes:
        params.append(f'scope="{_quote(" ".join(exc.scopes))}"')
    params.append(f'resource_metadata="{resource_metadata}"')
    return "Bearer " + ", ".join(params)


def error_response(
    exc: MCPAuthError,
    *,
    resource_metadata: str,
    request_id: Any = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Map an error to ``(status, headers, body)``; the body is a JSON-RPC error object."""
    headers: list[tuple[str, str]] = [("content-type", "application/json")]
    challenge = www_authenticate(exc, resource_metadata=resource_metadata)
    if challenge:
        headers.append(("www-authenticate", challenge))
    if exc.retry_after is not None:
        headers.append(("retry-after", str(max(1, int(exc.retry_after)))))
    headers.extend((k.lower(), v) for k, v in exc.extra_headers.items())
    data: dict[str, Any] = {"status": exc.status_code}
    if exc.error:
        data["error"] = exc.error
    data["error_description"] = exc.description
    if exc.scopes and isinstance(exc, InsufficientScope):
        data["required_scopes"] = list(exc.scopes)
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": exc.jsonrpc_code, "message": exc.description, "data": data},
    }
    return exc.status_code, headers, json.dumps(body, separators=(",", ":")).encode()


class ServiceError(Exception):
    """A domain error raised by an app's service layer (``todos.services``, ...).

    Raised anywhere inside a tool, it becomes an MCP tool error (``isError: true``) carrying
    ``str(exc)``, so its message must never contain secrets or argument values; the audit
    outcome is the class attribute ``outcome`` (``tool_error``, or ``denied`` for a refusal).
    """

    outcome: ClassVar[str] = "tool_error"


class NoPrincipal(RuntimeError):
    """Code that needs the caller ran outside a governed call (``current_principal()``, a
    tenant-confined queryset). Fails closed: there is never an implicit principal."""


class CrossTenantAccess(NoPrincipal, ServiceError):
    """Code inside a governed call reached for another tenant's rows (a write that would move
    or overwrite a row, a relation to a row of another tenant, a query for another principal).

    Raised inside a tool it is a tool error with outcome ``denied``; the message names no
    value."""

    outcome: ClassVar[str] = "denied"


class AuditWriteFailed(Exception):
    """The call's audit row could not be written; the call is rolled back and answered 500."""
