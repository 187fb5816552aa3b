"""Test settings plus an app whose tool name clashes (``mcpauth.E006``)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.dupes"]
