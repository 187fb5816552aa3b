"""One request's reply: a single JSON body, or a Server-Sent Events stream once it notifies.

A client that accepts ``text/event-stream`` gets the notifications a body sends about its own
request (``ctx.report_progress``, ``ctx.info`` ...) as they happen, as plain FastMCP's default
HTTP transport sends them: the reply becomes an SSE stream at the first notification, each
notification one ``event: message`` frame, the JSON-RPC reply the last. A call that sends none
is answered with one JSON body, exactly as a JSON-only client is (whose notifications have no
wire and are dropped, as on the MCP SDK's JSON-response transport). This is the deferred
commit of the SDK's 2026-07-28 SSE mode, used on both eras; the reply's status and body are
those of the JSON answer either way.

:class:`ReplyStream` also tracks what went out on any path (the SDK's transports included),
so a cancelled call can be settled without sending a second reply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import anyio

from mcpauth.types import Message, Send

#: The SDK's SSE response headers (``mcp.server._streamable_http_modern``).
SSE_HEADERS: Final[list[tuple[bytes, bytes]]] = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]


def sse_event(data: bytes) -> bytes:
    """One SSE ``message`` frame carrying one JSON-RPC message."""
    return b"event: message\r\ndata: " + data + b"\r\n\r\n"


def sse_reply(chunk: bytes) -> bytes | None:
    """The JSON-RPC response (as JSON bytes) that an SSE chunk carries, if it carries one.

    Used to hold a streamed reply until its audit row is written. A chunk without a response
    (a notification, a ping, the end of the stream) gives ``None``.
    """
    if b"data:" not in chunk or (b'"result"' not in chunk and b'"error"' not in chunk):
        return None
    for line in chunk.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        try:
            message = json.loads(data)
        except ValueError:
            continue
        if (
            isinstance(message, dict)
            and "id" in message
            and ("result" in message or "error" in message)
        ):
            return data
    return None


class ReplyStream:
    """The ``send`` of one request's reply, and what has gone out on it.

    ``await stream(message)`` passes an ASGI message through (the SDK's transports write this
    way); :meth:`notify` and :meth:`reply` write the single-exchange answer (see the module
    docstring).
    """

    def __init__(self, send: Send, *, sse: bool) -> None:
        self._send = send
        #: The client accepts ``text/event-stream``: notifications are streamed.
        self.sse = sse
        #: The response has started (its status and headers are out).
        self.started = False
        #: The response is complete.
        self.finished = False
        #: Orders the frames of notifications sent concurrently (made at the first one).
        self._lock: anyio.Lock | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        """A notification about this request: an SSE frame, or nothing for a JSON client."""
        if not self.sse or self.finished:
            return
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        data = json.dumps(message, separators=(",", ":")).encode()
        self._lock = self._lock or anyio.Lock()
        async with self._lock:
            if self.finished:
                return
            if not self.started:
                await self({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await self({"type": "http.response.body", "body": sse_event(data), "more_body": True})

    async def reply(self, body: bytes, status: int) -> None:
        """The JSON-RPC reply: the stream's last frame, or the JSON response."""
        if self.finished:
            return
        if self.started:
            self._lock = self._lock or anyio.Lock()
            async with self._lock:
                await self(
                    {"type": "http.response.body", "body": sse_event(body), "more_body": False}
                )
            return
        await self(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await self({"type": "http.response.body", "body": body})

    async def end(self, status: int) -> None:
        """End a response that has no reply to give (its client went away)."""
        if self.finished:
            return
        if not self.started:
            await self(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-length", b"0")],
                }
            )
        await self({"type": "http.response.body", "body": b"", "more_body": False})
