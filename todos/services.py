"""Every todo operation. Each takes the caller's :class:`~mcpauth.values.Principal`.

* every query starts from the tenant-confined manager (``Todo.objects.for_principal`` or, for
  the statements every call runs, ``Todo.objects.prepare``: the same querysets, compiled once,
  see ``mcpauth.prepared``), so it cannot leave the caller's tenant: another tenant's todo is
  "not found", exactly like one that does not exist;
* permission checks live here: ``todos.view_todo`` to read, ``add``/``change``/``delete`` to
  write;
* input limits live here: title 1-200 characters, description ≤ 5,000, page size 1-100.

Services return plain dicts, ready to serialize.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import uuid
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.utils import timezone

from mcpauth.exceptions import ServiceError
from mcpauth.managers import TenantQuerySet, TenantStatement
from mcpauth.values import Principal
from todos.models import DESCRIPTION_MAX, TITLE_MAX, Todo

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
#: The fields of a todo's API shape, read with ``values()`` (no model instance per row).
FIELDS = ("id", "title", "description", "completed", "created_by", "created_at", "updated_at")


class NotFound(ServiceError):
    pass


class InvalidInput(ServiceError):
    pass


class PermissionDenied(ServiceError):
    outcome = "denied"


def _require(principal: Principal, perm: str) -> None:
    if not principal.has_perm(perm):
        raise PermissionDenied(f"Permission denied: requires {perm}.")


def _todos(principal: Principal) -> TenantQuerySet[Todo]:
    return Todo.objects.for_principal(principal)


def serialize_row(row: dict[str, Any]) -> dict[str, Any]:
    """The API shape of a todo, from a ``values(*FIELDS)`` row."""
    return {
        "id": str(row["id"]),
        "title": row["title"],
        "description": row["description"] or None,
        "completed": row["completed"],
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def serialize(todo: Todo) -> dict[str, Any]:
    return serialize_row({name: getattr(todo, name) for name in FIELDS})


#: A lone surrogate: a valid JSON escape (``"\\ud800"``) that no database can store as UTF-8.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _storable(text: str, field: str) -> str:
    """``text`` if a database can store it: valid JSON may carry NUL and lone surrogates."""
    if "\x00" in text:
        raise InvalidInput(f"{field} must not contain NUL characters.")
    if _SURROGATE.search(text):
        raise InvalidInput(f"{field} must be valid Unicode text (it holds a lone surrogate).")
    return text


def _title(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("Title must be a string.")
    title = _storable(value.strip(), "Title")
    if not title:
        raise InvalidInput("Title must not be empty.")
    if len(title) > TITLE_MAX:
        raise InvalidInput(f"Title is too long ({len(title)} > {TITLE_MAX} characters).")
    return title


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput("Description must be a string.")
    _storable(value, "Description")
    if len(value) > DESCRIPTION_MAX:
        raise InvalidInput(
            f"Description is too long ({len(value)} > {DESCRIPTION_MAX} characters)."
        )
    return value


def _pk(todo_id: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(todo_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"Todo {str(todo_id)[:64]!r} not found.") from None


def _not_found(pk: uuid.UUID) -> NotFound:
    return NotFound(f"Todo {pk} not found.")


#: The statements every call runs, compiled once (mcpauth.prepared).
_ROW = Todo.objects.prepare(lambda todos, p: todos.filter(pk=p.pk).values(*FIELDS).order_by()[:1])
_EXISTS = Todo.objects.prepare(lambda todos, p: todos.filter(pk=p.pk).values("pk").order_by()[:1])
_DELETE = Todo.objects.prepare_delete(lambda todos, p: todos.filter(pk=p.pk))
_INSERT = Todo.objects.prepare_insert()


@functools.cache
def _update(fields: tuple[str, ...]) -> TenantStatement:
    return Todo.objects.prepare_update(lambda todos, p: todos.filter(pk=p.pk), fields)


@functools.cache
def _page(by_completed: bool, after: bool, limit: int) -> TenantStatement:
    """One statement per shape and page size (at most 4 x 100 of them)."""

    def build(todos: TenantQuerySet[Todo], p: Any) -> Any:
        if by_completed:
            todos = todos.filter(completed=p.completed)
        if after:
            # created_at <= … bounds the index range; the OR picks up where the last page ended
            todos = todos.filter(created_at__lte=p.created_at).filter(
                Q(created_at__lt=p.created_at) | Q(id__lt=p.id)
            )
        return todos.order_by("-created_at", "-id").values(*FIELDS)[:limit]

    return Todo.objects.prepare(build)


def _row(principal: Principal, pk: uuid.UUID) -> dict[str, Any] | None:
    return _ROW.first(principal, pk=pk)


def create_todo(principal: Principal, *, title: Any, description: Any = None) -> dict[str, Any]:
    _require(principal, "todos.add_todo")
    row = _INSERT.insert(
        principal,
        title=_title(title),
        description=_description(description),
        created_by=principal.subject,
    )
    return serialize_row(row)


def get_todo(principal: Principal, todo_id: Any) -> dict[str, Any]:
    _require(principal, "todos.view_todo")
    pk = _pk(todo_id)
    row = _row(principal, pk)
    if row is None:
        raise _not_found(pk)
    return serialize_row(row)


def update_todo(
    principal: Principal,
    todo_id: Any,
    *,
    title: Any = None,
    description: Any = None,
    completed: bool | None = None,
) -> dict[str, Any]:
    """Change the given fields: an ``UPDATE`` (which takes the row lock), then the row."""
    _require(principal, "todos.change_todo")
    pk = _pk(todo_id)
    changes: dict[str, Any] = {}
    try:
        if title is not None:
            changes["title"] = _title(title)
        if description is not None:
            changes["description"] = _description(description)
        if completed is not None:
            if not isinstance(completed, bool):
                raise InvalidInput("Completed must be true or false.")
            changes["completed"] = completed
    except InvalidInput:
        # a todo that is not the caller's is "not found", whatever the input
        if _EXISTS.first(principal, pk=pk) is None:
            raise _not_found(pk) from None
        raise
    changes["updated_at"] = timezone.now()
    if not _update(tuple(changes)).run(principal, pk=pk, **changes):
        raise _not_found(pk)
    row = _row(principal, pk)
    if row is None:  # deleted between the two statements (outside a transaction)
        raise _not_found(pk)
    return serialize_row(row)


def delete_todo(principal: Principal, todo_id: Any) -> str:
    _require(principal, "todos.delete_todo")
    pk = _pk(todo_id)
    if not _DELETE.run(principal, pk=pk):
        raise _not_found(pk)
    return str(pk)


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = json.dumps([row["created_at"].isoformat(), str(row["id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, pk = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(created), uuid.UUID(pk)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("Invalid cursor.") from None


def list_todos(
    principal: Principal,
    *,
    completed: bool | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A page of the tenant's todos, newest first, with an opaque ``next_cursor``.

    Keyset pagination on ``(created_at, id)``: the ``created_at <= …`` bound keeps each page an
    index range scan of ``(tenant, [completed,] -created_at, -id)`` however deep the cursor.
    """
    _require(principal, "todos.view_todo")
    size = DEFAULT_PAGE_SIZE if limit is None else limit
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"Limit must be between 1 and {MAX_PAGE_SIZE}.")
    values: dict[str, Any] = {}
    if completed is not None:
        values["completed"] = completed
    if cursor:
        values["created_at"], values["id"] = _decode_cursor(cursor)
    page = _page(completed is not None, bool(cursor), size + 1).rows(principal, **values)
    next_cursor = _encode_cursor(page[size - 1]) if len(page) > size else None
    return {"todos": [serialize_row(r) for r in page[:size]], "next_cursor": next_cursor}
