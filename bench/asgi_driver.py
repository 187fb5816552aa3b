"""Drive an ASGI app in this process: its lifespan and one HTTP ``tools/call`` (no socket).

Used by the in-process round trips (``bench/micro.py``), the instruction counts
(``bench/instructions.py``) and ``bench/obs_overhead.py``. A leaf: imports nothing of the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocol import Era

#: ``await app(scope, receive, send)`` (loosely typed: Django's, Starlette's and ours differ).
ASGIApp = Callable[..., Awaitable[None]]


def request_headers(
    token: str, era: Era, tool: str, host: str = "127.0.0.1"
) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", host.encode()),
        (b"authorization", f"Bearer {token}".encode()),
        (b"user-agent", b"bench-inprocess"),
        *((k.lower().encode(), v.encode()) for k, v in era.headers(tool).items()),
    ]


async def call(app: ASGIApp, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """POST ``body`` to ``/mcp``; the reply's status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp, timeout: float = 30) -> AsyncIterator[None]:
    """Run ``app``'s lifespan startup, the block, then its shutdown."""
    startup_done = asyncio.Event()
    shutdown_done = asyncio.Event()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})

    async def receive() -> dict[str, Any]:
        return await queue.get()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup"):
            startup_done.set()
        if message["type"].startswith("lifespan.shutdown"):
            shutdown_done.set()

    async def run() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    task = asyncio.create_task(run())
    await asyncio.wait_for(startup_done.wait(), timeout)
    try:
        yield
    finally:
        await queue.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shutdown_done.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
