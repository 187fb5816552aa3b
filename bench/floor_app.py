"""Floor for ``make bench``: the HTTP stack's own limit on the same uvicorn.

A raw ASGI app that reads the request body, ``json.loads`` it and answers a fixed JSON-RPC
``tools/call`` result about the size of a ``get_todo`` reply. No auth, no MCP, no database:
whatever the other servers do on top of this costs them throughput.

``uvicorn floor_app:app --app-dir bench``
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

_TODO = {
    "id": "00000000-0000-4000-8000-000000000000",
    "title": "Seeded todo 0",
    "description": "seeded",
    "completed": False,
    "created_by": "bench",
    "created_at": "2026-01-01T00:00:00+00:00",
    "updated_at": "2026-01-01T00:00:00+00:00",
}
_RESULT = {"todo": _TODO}
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": [{"type": "text", "text": json.dumps(_RESULT)}],
            "structuredContent": _RESULT,
            "isError": False,
        },
    },
    separators=(",", ":"),
).encode()
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    status = 200
    try:
        json.loads(body) if body else None
    except ValueError:
        status = 400
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
