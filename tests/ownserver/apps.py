from django.apps import AppConfig


class OwnServerConfig(AppConfig):
    """A broken app for tests/test_mcpauth_components.py: its mcp.py builds a FastMCP server of
    its own (mcpauth.E031), and declares a template FastMCP refuses (mcpauth.E030)."""

    name = "tests.ownserver"
    label = "ownserver"
