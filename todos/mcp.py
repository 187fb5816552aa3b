"""The todo MCP tools: thin edges over :mod:`todos.services`.

Names and arguments match the Scalekit/FastMCP quickstart, so its clients work unchanged. Each
tool declares its permissions once; ``mcpauth`` checks them before the tool runs, runs it
through FastMCP with its writes and its audit row in one transaction, and
``current_principal()`` is the admitted caller.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from mcpauth import current_principal, tool
from todos import services

TodoId = Annotated[str, Field(description="The todo's id, as returned by create_todo.")]


@tool(permissions=["todos.add_todo"])
def create_todo(title: str, description: str | None = None) -> dict[str, Any]:
    """Create a todo. Title: 1-200 characters; description: up to 5,000."""
    todo = services.create_todo(current_principal(), title=title, description=description)
    return {"todo": todo}


@tool(permissions=["todos.view_todo"], read_only=True)
def list_todos(
    completed: bool | None = None,
    limit: Annotated[int | None, Field(description="Page size, 1-100 (default 50).")] = None,
    cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
) -> dict[str, Any]:
    """List todos, newest first, optionally filtered by completion. Paginated."""
    return services.list_todos(current_principal(), completed=completed, limit=limit, cursor=cursor)


@tool(permissions=["todos.view_todo"], read_only=True)
def get_todo(todo_id: TodoId) -> dict[str, Any]:
    """Get one todo by id."""
    return {"todo": services.get_todo(current_principal(), todo_id)}


@tool(permissions=["todos.change_todo"], idempotent=True)
def update_todo(
    todo_id: TodoId,
    title: str | None = None,
    description: str | None = None,
    completed: bool | None = None,
) -> dict[str, Any]:
    """Update a todo's title, description or completion."""
    todo = services.update_todo(
        current_principal(), todo_id, title=title, description=description, completed=completed
    )
    return {"todo": todo}


@tool(permissions=["todos.delete_todo"], destructive=True, idempotent=True)
def delete_todo(todo_id: TodoId) -> dict[str, Any]:
    """Delete a todo."""
    return {"deleted": services.delete_todo(current_principal(), todo_id)}
