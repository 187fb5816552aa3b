from mcpauth import tool


@tool(permissions=["todos.view_todo"], read_only=True)
def get_todo(todo_id: str) -> dict:
    """Clashes with todos.mcp.get_todo."""
    return {}


@tool(permissions=["not a permission"], name="dupes_bad_permission")
def bad_permission() -> None:
    """Its permission is not app_label.codename."""
