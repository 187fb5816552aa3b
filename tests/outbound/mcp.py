"""Tools that call the downstreams of the tests (``tests/downstream_service.py``).

Each takes the downstream's declared name, so one tool serves every credential kind.
"""

from __future__ import annotations

import os
from typing import Any

import httpx2
from fastmcp import Context
from fastmcp.server.dependencies import get_http_headers, get_http_request

from mcpauth import downstream, tool

from .models import Receipt

USE = ["outbound.add_receipt"]


def _answer(resp: httpx2.Response) -> dict[str, Any]:
    return {
        "status": resp.status_code,
        "body": resp.json(),
        # what the tool can see of the request it sent: never the credential
        "request_headers": dict(resp.request.headers),
        "pid": os.getpid(),
    }


@tool(permissions=USE)
def call_sync(name: str, path: str = "/whoami", query: str = "") -> dict[str, Any]:
    """A sync tool (in a transaction) that calls downstream `name`."""
    with downstream.client(name) as client:
        return _answer(client.get(path, params=query))


@tool(permissions=USE, read_only=True)
async def call_async(name: str, path: str = "/whoami") -> dict[str, Any]:
    """An async tool that calls downstream `name`."""
    async with downstream.async_client(name) as client:
        return _answer(await client.get(path))


@tool(permissions=USE)
def call_twice(name: str) -> list[int]:
    """Two requests on one client (one credential), then two on a new client."""
    statuses = []
    for _ in range(2):
        with downstream.client(name) as client:
            statuses += [client.get("/a").status_code, client.get("/b").status_code]
    return statuses


@tool(permissions=USE)
def call_then_write(name: str, label: str) -> dict[str, Any]:
    """Calls first, then writes: on SQLite its transaction waits without the write lock."""
    with downstream.client(name) as client:
        status = client.get("/wait").status_code
    receipt = Receipt.objects.current().create(label=label)
    return {"status": status, "receipt": receipt.pk}


@tool(permissions=USE)
def write_then_call(name: str, label: str) -> dict[str, Any]:
    """Writes first, then calls: on SQLite the write lock stays held while it waits."""
    receipt = Receipt.objects.current().create(label=label)
    with downstream.client(name) as client:
        status = client.get("/after-write").status_code
    return {"status": status, "receipt": receipt.pk}


@tool(permissions=USE, read_only=True)
def count_receipts() -> int:
    return Receipt.objects.current().count()


@tool(permissions=USE, read_only=True)
def call_url(name: str, url: str, follow_redirects: bool = False) -> int:
    """Sends to an absolute URL with downstream `name`'s client (elsewhere: refused)."""
    with downstream.client(name, follow_redirects=follow_redirects) as client:
        return client.get(url).status_code


@tool(permissions=USE, read_only=True)
def pass_through(name: str, token: str, where: str = "header") -> int:
    """A tool that got hold of the caller's token and puts it in a request: refused."""
    with downstream.client(name) as client:
        if where == "query":
            return client.get("/x", params={"t": token}).status_code
        if where == "body":
            return client.post("/x", json={"token": token}).status_code
        return client.get("/x", headers={"x-forwarded-token": token}).status_code


@tool(permissions=USE, read_only=True)
def catch_unavailable(name: str) -> str:
    """A tool that handles a downstream failure with plain httpx error handling."""
    try:
        with downstream.client(name) as client:
            client.get("/x")
    except httpx2.HTTPError as exc:
        return f"handled {type(exc).__name__}"
    return "answered"


def _seen_by_tool(ctx: Context | None) -> dict[str, Any]:
    request = get_http_request()
    seen: dict[str, Any] = {
        "get_http_headers": get_http_headers(include_all=True),
        "request_headers": dict(request.headers),
        "scope_headers": [
            [bytes(k).decode("latin-1"), bytes(v).decode("latin-1")]
            for k, v in request.scope.get("headers", [])
        ],
    }
    if ctx is not None:
        meta_request = ctx.request_context.request if ctx.request_context else None
        if meta_request is not None:
            seen["context_request_headers"] = dict(meta_request.headers)
    return seen


@tool(permissions=USE, read_only=True)
def peek_request(ctx: Context) -> dict[str, Any]:
    """Everything a sync tool can see of its HTTP request."""
    return _seen_by_tool(ctx)


@tool(permissions=USE, read_only=True)
async def peek_request_async(ctx: Context) -> dict[str, Any]:
    """Everything an async tool can see of its HTTP request."""
    return _seen_by_tool(ctx)
