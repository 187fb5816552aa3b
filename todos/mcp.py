"""The todo MCP tools: thin edges over :mod:`todos.services`.

Names and arguments match the Scalekit/FastMCP quickstart, so its clients work unchanged.
Each tool declares its permissions once (``governed_tool``); ``run_tool`` supplies the caller's
``Principal`` and writes the audit row in the same transaction as any change.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastmcp import FastMCP
from pydantic import Field

from mcpauth.fastmcp import ToolVisibility
from mcpauth.tools import governed_tool, run_tool
from todos import services

mcp = FastMCP(
    name="Governed Todo Server",
    instructions="Manage your organisation's todos. Every call is authorised and audited.",
    mask_error_details=True,
    middleware=[ToolVisibility()],
)

TodoId = Annotated[str, Field(description="The todo's id, as returned by create_todo.")]


@governed_tool(mcp, permissions=("todos.add_todo",))
def create_todo(title: str, description: str | None = None) -> dict[str, Any]:
    """Create a todo. Title: 1-200 characters; description: up to 5,000."""
    return run_tool(
        lambda p: {"todo": services.create_todo(p, title=title, description=description)}
    )


@governed_tool(mcp, permissions=("todos.view_todo",), read_only=True)
def list_todos(
    completed: bool | None = None,
    limit: Annotated[int | None, Field(description="Page size, 1-100 (default 50).")] = None,
    cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
) -> dict[str, Any]:
    """List todos, newest first, optionally filtered by completion. Paginated."""
    return run_tool(
        lambda p: services.list_todos(p, completed=completed, limit=limit, cursor=cursor)
    )


@governed_tool(mcp, permissions=("todos.view_todo",), read_only=True)
def get_todo(todo_id: TodoId) -> dict[str, Any]:
    """Get one todo by id."""
    return run_tool(lambda p: {"todo": services.get_todo(p, todo_id)})


@governed_tool(mcp, permissions=("todos.change_todo",))
def update_todo(
    todo_id: TodoId,
    title: str | None = None,
    description: str | None = None,
    completed: bool | None = None,
) -> dict[str, Any]:
    """Update a todo's title, description or completion."""
    return run_tool(
        lambda p: {
            "todo": services.update_todo(
                p, todo_id, title=title, description=description, completed=completed
            )
        }
    )


@governed_tool(mcp, permissions=("todos.delete_todo",))
def delete_todo(todo_id: TodoId) -> dict[str, Any]:
    """Delete a todo."""
    return run_tool(lambda p: {"deleted": services.delete_todo(p, todo_id)})
