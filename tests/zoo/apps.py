from django.apps import AppConfig


class ZooConfig(AppConfig):
    """A test-only app whose tools cover what FastMCP supports (tests/test_mcpauth_zoo.py)."""

    name = "tests.zoo"
    label = "zoo"
    default_auto_field = "django.db.models.BigAutoField"
