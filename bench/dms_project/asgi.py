"""``uvicorn dms_project.asgi:application`` (``--app-dir bench``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dms_project.settings")

application = get_asgi_application()
