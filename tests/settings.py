"""Settings for the test suite: the project's, plus the test-only apps under ``tests/``."""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.zoo", "tests.notes"]
