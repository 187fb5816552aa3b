from mcpauth import tool
from mcpauth.runtime.server import get_server


@tool(permissions=["todos.view_todo"], read_only=True)
def early_tool() -> str:
    return "registered"


server = get_server()  # too early: raises ServerBuiltTooEarly
