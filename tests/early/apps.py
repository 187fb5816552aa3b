from django.apps import AppConfig


class EarlyConfig(AppConfig):
    """A broken app for tests/test_mcpauth_components.py: its mcp.py asks for the MCP server
    while apps are still loading (tools registered after that would be lost)."""

    name = "tests.early"
    label = "early"
