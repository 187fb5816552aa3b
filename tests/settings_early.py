"""Test settings plus an app whose mcp.py calls get_server() at import time."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.early"]
