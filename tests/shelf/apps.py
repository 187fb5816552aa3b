from django.apps import AppConfig


class ShelfConfig(AppConfig):
    """A test-only app whose admin has an m2m field and an inline (test_audit_admin_data.py)."""

    name = "tests.shelf"
    label = "shelf"
    default_auto_field = "django.db.models.BigAutoField"
