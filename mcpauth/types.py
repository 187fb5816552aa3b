"""ASGI types and header access shared by the ``/mcp`` modules."""

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
