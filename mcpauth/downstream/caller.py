"""The caller's bearer token: kept from the tool, held for the platform.

The MCP authorization spec forbids token passthrough: a tool must not forward the token it was
called with to another service. So the ``Authorization`` header is taken out of the request
before FastMCP sees it (:func:`without_authorization`): ``get_http_headers(include_all=True)``,
``get_http_request()`` and ``Context`` never show it. The raw token is bound here instead, for
the one platform code path that needs it: a ``token_exchange`` (the RFC 8693 ``subject_token``)
or a declared ``forward`` (see :mod:`mcpauth.downstream.credentials`). It is never logged,
audited or given to a tool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mcpauth.types import Scope

_raw: ContextVar[str | None] = ContextVar("mcpauth_caller_bearer", default=None)

#: Headers that carry the caller's credentials: never shown to tools.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization"})


def without_authorization(scope: Scope) -> tuple[Scope, str | None]:
    """A copy of ``scope`` without credential headers, and the bearer token it carried.

    Governance already refused ambiguous or malformed ``Authorization`` headers, so the first
    ``Bearer`` value is the admitted token.
    """
    token: str | None = None
    headers = []
    for key, value in scope.get("headers", []):
        if bytes(key).lower() in CREDENTIAL_HEADERS:
            if token is None and bytes(key).lower() == b"authorization":
                scheme, _, rest = bytes(value).decode("latin-1").strip().partition(" ")
                if scheme.lower() == "bearer" and rest.strip():
                    token = rest.strip()
            continue
        headers.append((key, value))
    stripped = dict(scope)
    stripped["headers"] = headers
    return stripped, token


@contextmanager
def bound(token: str | None) -> Iterator[None]:
    """Hold the caller's raw token for the platform while the request is served."""
    reset = _raw.set(token)
    try:
        yield
    finally:
        _raw.reset(reset)


def raw_token() -> str | None:
    """The caller's raw bearer token (platform code only: exchange and declared forward)."""
    return _raw.get()
