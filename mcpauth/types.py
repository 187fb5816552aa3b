"""ASGI types, header access and the client address, shared by the ``/mcp`` modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lowercase bytes), in order."""
    return [v for k, v in scope.get("headers", []) if k.lower() == name]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name``, decoded, or ``None``."""
    values = header_values(scope, name)
    return bytes(values[0]).decode("latin-1") if values else None


def client_ip(scope: Scope, trusted_proxies: int) -> str:
    """The caller's address: the peer, or with ``trusted_proxies`` hops of ``X-Forwarded-For``
    trusted, the address that many hops back (the first one when fewer were sent)."""
    peer = (scope.get("client") or ("", 0))[0] or ""
    if trusted_proxies <= 0:
        return peer
    forwarded: list[str] = []
    for value in header_values(scope, b"x-forwarded-for"):
        forwarded.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    if not forwarded:
        return peer
    return forwarded[-trusted_proxies] if len(forwarded) >= trusted_proxies else forwarded[0]
