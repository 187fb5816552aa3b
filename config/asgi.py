"""ASGI entry point: ``uvicorn config.asgi:application`` serves everything.

The documented contract for any project (see ``mcpauth.asgi``): governed ``/mcp``, Django for
the rest, the lifespan, the access lines and the startup checks.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from mcpauth.asgi import get_asgi_application

application = get_asgi_application()
