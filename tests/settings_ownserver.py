"""Test settings plus an app that builds its own FastMCP server (``mcpauth.E031``) and declares
broken resources and prompts (``E030``, ``E006``, ``E007``)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.ownserver"]
