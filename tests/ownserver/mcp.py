from fastmcp import FastMCP

from mcpauth import prompt, resource

mcp = FastMCP("an app's own server")


@mcp.tool
def own_tool() -> str:
    return "never served"


@mcp.resource("own://secret")
def own_resource() -> str:
    return "never served"


@resource("own://items/{item_id}", permissions=["todos.view_todo"])
def mismatched(other: str) -> str:
    """Its function's argument is not the template's parameter: FastMCP refuses it."""
    return other


@resource("own://bad", permissions=["not a permission"])
def bad_permission() -> str:
    return ""


@prompt(permissions=["todos.view_todo"], name="summarize_notes")
def clashing_prompt() -> str:
    """Takes the notes app's prompt name."""
    return ""


@resource("notes://recent", permissions=["todos.view_todo"])
def clashing_resource() -> str:
    """Takes the notes app's resource URI."""
    return ""
