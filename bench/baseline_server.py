"""Baseline for ``make bench``: the seed Scalekit/FastMCP quickstart todo server, re-expressed.

What a user of the seed quickstart would run, with the same five tools, arguments and result
shapes as the governed server, so the two can be driven by the same load:

* authentication is FastMCP's own :class:`JWTVerifier` (the verifier ``ScalekitProvider`` builds:
  RS256 against a JWKS URI, ``iss`` and ``aud`` checked) on the bench's RSA key;
* scope checks are the quickstart's: ``todo:read`` / ``todo:write`` looked up in the access
  token's scopes inside each tool (a missing scope returns ``{"error": ...}``, as there);
* the store is an in-memory dict (one per worker process; every worker seeds the same
  deterministic todos from ``BENCH_SEED_TODOS``, so any worker can answer for the seeded ids);
* the app is ``mcp.http_app(path="/mcp", stateless_http=True, json_response=True)`` served by
  uvicorn (``uvicorn bench.baseline_server:app``).

Configuration (set by ``bench/run.py``): ``BENCH_JWKS_URL``, ``BENCH_ISSUER``,
``BENCH_AUDIENCE``, ``BENCH_BASE_URL``, ``BENCH_SEED_TODOS`` (default 64).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.auth.providers.jwt import JWTVerifier
from fastmcp.server.dependencies import AccessToken, get_access_token

#: Seeded todo ids are uuid5(SEED_NAMESPACE, f"todo-{i}"), the same in bench/run.py.
SEED_NAMESPACE = uuid.UUID("6f1c2c8e-3b1a-4f57-9d0e-b3f0c0ffee00")

verifier = JWTVerifier(
    jwks_uri=os.environ["BENCH_JWKS_URL"],
    issuer=os.environ["BENCH_ISSUER"],
    audience=os.environ["BENCH_AUDIENCE"],
    algorithm="RS256",
    base_url=os.environ.get("BENCH_BASE_URL") or None,
)

mcp = FastMCP("Todo Server", auth=verifier)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class TodoItem:
    id: str
    title: str
    description: str | None
    completed: bool = False
    created_by: str = ""
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Insertion order = creation order, so reversed() is newest first.
_TODO_STORE: dict[str, TodoItem] = {}


def _seed(count: int) -> None:
    for i in range(count):
        todo_id = str(uuid.uuid5(SEED_NAMESPACE, f"todo-{i}"))
        _TODO_STORE[todo_id] = TodoItem(
            id=todo_id, title=f"Seeded todo {i}", description="seeded", created_by="bench"
        )


_seed(int(os.environ.get("BENCH_SEED_TODOS", "64")))


def _require_scope(scope: str) -> str | None:
    """An error message if the active token lacks ``scope``, else None (as in the quickstart)."""
    token: AccessToken | None = get_access_token()
    if token is None or scope not in token.scopes:
        return f"Insufficient permissions: `{scope}` scope required."
    return None


def _subject() -> str:
    token = get_access_token()
    if token is None:
        return ""
    return str(token.claims.get("sub") or token.client_id)


@mcp.tool
def create_todo(title: str, description: str | None = None) -> dict[str, Any]:
    """Create a new todo item."""
    error = _require_scope("todo:write")
    if error:
        return {"error": error}
    todo = TodoItem(
        id=str(uuid.uuid4()), title=title, description=description, created_by=_subject()
    )
    _TODO_STORE[todo.id] = todo
    return {"todo": todo.to_dict()}


@mcp.tool
def list_todos(
    completed: bool | None = None, limit: int | None = None, cursor: str | None = None
) -> dict[str, Any]:
    """List todos, newest first, optionally filtering by completion state. Paginated."""
    error = _require_scope("todo:read")
    if error:
        return {"error": error}
    size = 50 if limit is None else limit
    if not 1 <= size <= 100:
        return {"error": "Limit must be between 1 and 100."}
    items = (
        t for t in reversed(_TODO_STORE.values()) if completed is None or t.completed == completed
    )
    if cursor:
        for t in items:
            if t.id == cursor:
                break
    rows = list(islice(items, size + 1))
    page = rows[:size]
    next_cursor = page[-1].id if len(rows) > size else None
    return {"todos": [t.to_dict() for t in page], "next_cursor": next_cursor}


@mcp.tool
def get_todo(todo_id: str) -> dict[str, Any]:
    """Fetch a single todo by its identifier."""
    error = _require_scope("todo:read")
    if error:
        return {"error": error}
    todo = _TODO_STORE.get(todo_id)
    if todo is None:
        return {"error": f"Todo `{todo_id}` not found."}
    return {"todo": todo.to_dict()}


@mcp.tool
def update_todo(
    todo_id: str,
    title: str | None = None,
    description: str | None = None,
    completed: bool | None = None,
) -> dict[str, Any]:
    """Update fields on an existing todo."""
    error = _require_scope("todo:write")
    if error:
        return {"error": error}
    todo = _TODO_STORE.get(todo_id)
    if todo is None:
        return {"error": f"Todo `{todo_id}` not found."}
    if title is not None:
        todo.title = title
    if description is not None:
        todo.description = description
    if completed is not None:
        todo.completed = completed
    todo.updated_at = _now()
    return {"todo": todo.to_dict()}


@mcp.tool
def delete_todo(todo_id: str) -> dict[str, Any]:
    """Remove a todo from the store."""
    error = _require_scope("todo:write")
    if error:
        return {"error": error}
    todo = _TODO_STORE.pop(todo_id, None)
    if todo is None:
        return {"error": f"Todo `{todo_id}` not found."}
    return {"deleted": todo_id}


app = mcp.http_app(path="/mcp", stateless_http=True, json_response=True)
