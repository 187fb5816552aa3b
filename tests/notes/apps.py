from django.apps import AppConfig


class NotesConfig(AppConfig):
    """The README's "Add your own tools" example, verbatim (tests/test_mcpauth_platform.py)."""

    name = "tests.notes"
    label = "notes"
    default_auto_field = "django.db.models.BigAutoField"
