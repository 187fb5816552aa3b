from django.apps import AppConfig


class OutboundConfig(AppConfig):
    """Test-only tools that call other systems (tests/test_mcpauth_downstream_*.py)."""

    name = "tests.outbound"
    label = "outbound"
    default_auto_field = "django.db.models.BigAutoField"
