from django.apps import AppConfig


class DupesConfig(AppConfig):
    """A broken app for tests/test_mcpauth_platform.py: its tool takes a name that is in use."""

    name = "tests.dupes"
    label = "dupes"
