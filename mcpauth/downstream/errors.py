"""What a downstream call can raise inside a tool.

Each is a :class:`~mcpauth.exceptions.ServiceError`: left uncaught, the tool call ends as a
clear MCP tool error with this message (never a credential) and the class's ``outcome``. A
timeout or connection failure is also an ``httpx2.TransportError``, so ``except
httpx2.HTTPError`` in a tool catches it as it would without the platform.
"""

from __future__ import annotations

from typing import ClassVar

import httpx2

from mcpauth.exceptions import ServiceError


class DownstreamError(ServiceError):
    """Base class. ``code`` is the outbound audit row's ``error_code``."""

    outcome: ClassVar[str] = "tool_error"
    #: The outbound row's outcome (what happened to the outbound call itself).
    record_outcome: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        #: The HTTP status the other side answered with (an issuer's refusal), or 0.
        self.status = status


class NotDeclared(DownstreamError):
    """``downstream.client(name)`` for a name ``MCPAUTH_DOWNSTREAMS`` does not declare."""

    record_outcome = "invalid_request"


class DownstreamRefused(DownstreamError):
    """The platform refused to send the request (another origin, a forward the caller's token
    does not allow, the caller's own token in the request)."""

    outcome = "denied"
    record_outcome = "denied"


class CredentialRefused(DownstreamError):
    """No credential for this caller: the issuer refused, or no secret is stored for it."""

    outcome = "denied"
    record_outcome = "denied"


class CredentialUnavailable(DownstreamError):
    """The credential could not be obtained (the issuer did not answer, a key is missing)."""


class DownstreamUnavailable(DownstreamError, httpx2.TransportError):
    """The downstream did not answer: timeout, refused connection, broken response."""

    def __init__(
        self, message: str, *, code: str = "", request: httpx2.Request | None = None
    ) -> None:
        DownstreamError.__init__(self, message, code=code)
        self._request = request
