"""The five todo tools, declared as django-mcp-server's README shows: an ``MCPToolset``
subclass in the app's ``mcp.py`` (found by ``autodiscover_modules("mcp")``), each public method
a tool.

Same arguments and result shapes as ``bench/fair_server.py`` (``{"todo": {...}}``,
``{"todos": [...], "next_cursor": ...}``, ``{"deleted": id}``, ``{"error": ...}``), the
quickstart's scope checks (``todo:read`` / ``todo:write`` in the verified token), and the same
database work per call on the bench tenant's rows: ``get_todo`` one ``SELECT … LIMIT 1`` by id
and tenant, ``create_todo`` one ``INSERT`` in autocommit, ``update_todo`` an ``UPDATE`` then a
``SELECT``, ``delete_todo`` one ``DELETE``, ``list_todos`` one keyset-paginated ``SELECT``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone
from mcp_server import MCPToolset

from .models import DESCRIPTION_MAX, TITLE_MAX, Todo

FIELDS = ("id", "title", "description", "completed", "created_by", "created_at", "updated_at")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


class ToolError(Exception):
    """A caller's mistake: answered as ``{"error": ...}``."""


def _todos() -> QuerySet[Todo]:
    return Todo.objects.filter(tenant_id=settings.BENCH_TENANT_PK)


def _serialize(row: dict[str, Any]) -> dict[str, Any]:
    """The API shape of a todo, as ``todos.services.serialize_row`` (which this venv, on
    mcp 1.x, cannot import; so are the cursor helpers below)."""
    return {
        "id": str(row["id"]),
        "title": row["title"],
        "description": row["description"] or None,
        "completed": row["completed"],
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _title(value: Any) -> str:
    title = value.strip() if isinstance(value, str) else ""
    if not title or "\x00" in title or len(title) > TITLE_MAX:
        raise ToolError(f"Title must be 1-{TITLE_MAX} characters.")
    return title


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or "\x00" in value or len(value) > DESCRIPTION_MAX:
        raise ToolError(f"Description must be a string of at most {DESCRIPTION_MAX} characters.")
    return value


def _pk(todo_id: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(todo_id))
    except (ValueError, TypeError, AttributeError):
        raise ToolError(f"Todo {str(todo_id)[:64]!r} not found.") from None


def _row(pk: uuid.UUID) -> dict[str, Any]:
    rows = list(_todos().filter(pk=pk).values(*FIELDS)[:1])
    if not rows:
        raise ToolError(f"Todo {pk} not found.")
    return rows[0]


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = json.dumps([row["created_at"].isoformat(), str(row["id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, pk = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), uuid.UUID(pk)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ToolError("Invalid cursor.") from None


class TodoTools(MCPToolset):
    def _scope_error(self, scope: str) -> dict[str, Any] | None:
        if scope not in getattr(self.request.user, "scopes", ()):
            return {"error": f"Insufficient permissions: `{scope}` scope required."}
        return None

    def create_todo(self, title: str, description: str | None = None) -> dict[str, Any]:
        """Create a new todo item."""
        if denied := self._scope_error("todo:write"):
            return denied
        try:
            todo = Todo.objects.create(
                tenant_id=settings.BENCH_TENANT_PK,
                title=_title(title),
                description=_description(description),
                created_by=self.request.user.username,
            )
        except ToolError as exc:
            return {"error": str(exc)}
        return {"todo": _serialize({name: getattr(todo, name) for name in FIELDS})}

    def list_todos(
        self, completed: bool | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """List todos, newest first, optionally filtering by completion state. Paginated."""
        if denied := self._scope_error("todo:read"):
            return denied
        size = DEFAULT_PAGE_SIZE if limit is None else limit
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
            return {"error": f"Limit must be between 1 and {MAX_PAGE_SIZE}."}
        todos = _todos()
        if completed is not None:
            todos = todos.filter(completed=completed)
        if cursor:
            try:
                created, pk = _decode_cursor(cursor)
            except ToolError as exc:
                return {"error": str(exc)}
            todos = todos.filter(created_at__lte=created).filter(
                Q(created_at__lt=created) | Q(id__lt=pk)
            )
        page = list(todos.order_by("-created_at", "-id").values(*FIELDS)[: size + 1])
        next_cursor = _encode_cursor(page[size - 1]) if len(page) > size else None
        return {"todos": [_serialize(r) for r in page[:size]], "next_cursor": next_cursor}

    def get_todo(self, todo_id: str) -> dict[str, Any]:
        """Fetch a single todo by its identifier."""
        if denied := self._scope_error("todo:read"):
            return denied
        try:
            return {"todo": _serialize(_row(_pk(todo_id)))}
        except ToolError as exc:
            return {"error": str(exc)}

    def update_todo(
        self,
        todo_id: str,
        title: str | None = None,
        description: str | None = None,
        completed: bool | None = None,
    ) -> dict[str, Any]:
        """Update fields on an existing todo."""
        if denied := self._scope_error("todo:write"):
            return denied
        try:
            pk = _pk(todo_id)
            changes: dict[str, Any] = {}
            if title is not None:
                changes["title"] = _title(title)
            if description is not None:
                changes["description"] = _description(description)
            if completed is not None:
                changes["completed"] = bool(completed)
            if not _todos().filter(pk=pk).update(updated_at=timezone.now(), **changes):
                raise ToolError(f"Todo {pk} not found.")
            return {"todo": _serialize(_row(pk))}
        except ToolError as exc:
            return {"error": str(exc)}

    def delete_todo(self, todo_id: str) -> dict[str, Any]:
        """Remove a todo."""
        if denied := self._scope_error("todo:write"):
            return denied
        try:
            pk = _pk(todo_id)
        except ToolError as exc:
            return {"error": str(exc)}
        deleted, _ = _todos().filter(pk=pk).delete()
        if not deleted:
            return {"error": f"Todo {pk} not found."}
        return {"deleted": str(pk)}
