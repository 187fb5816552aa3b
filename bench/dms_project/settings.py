"""Settings of the django-mcp-server bench project (``bench/dms_project``).

A minimal Django project serving the bench's todos with django-mcp-server 0.5.7 the way its
README tells a user to: ``mcp_server`` in ``INSTALLED_APPS``, ``include("mcp_server.urls")``,
tools declared in the app's ``mcp.py``, authentication through
``DJANGO_MCP_AUTHENTICATION_CLASSES`` (a DRF authentication class) and the stateless server
(``DJANGO_MCP_GLOBAL_SERVER_CONFIG = {"stateless": True}``).

It runs in its own venv (``bench/.venv-dms``, pinned in ``bench/dms-requirements.txt``): it
needs mcp 1.x, the project runs mcp 2.x, so it cannot import the project's code. The database
is the bench's (``DATABASE_URL``), the table ``todos_todo`` through an unmanaged model, with
Django's pool (``"pool": True``: psycopg's, 4 connections per process) as Django's docs advise
under ASGI, and server-side binding as ours.

Environment (set by ``bench/load.py``): ``DATABASE_URL``, ``BENCH_JWKS_URL``,
``BENCH_ISSUER``, ``BENCH_AUDIENCE``, ``BENCH_TENANT_PK``.
"""

from __future__ import annotations

import os

import dj_database_url

SECRET_KEY = os.environ.get("DMS_SECRET_KEY", "bench-only-django-mcp-server-secret-key")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",  # DRF's AnonymousUser
    "rest_framework",
    "mcp_server",
    "dms_project.todos_dms",
]
# startproject's stack without sessions, auth, messages and CSRF: the MCP view is stateless,
# authenticated by a bearer token and csrf_exempt, so those would only cost time
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "dms_project.urls"
TEMPLATES: list[dict[str, object]] = []

# Django's documented set-up under ASGI: no persistent connections (CONN_MAX_AGE=0; under ASGI
# they leak: each call's connection is opened in a context the request's end never sees) but
# psycopg's pool, which Django (5.1+) returns every connection to. Server-side binding as ours.
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
DATABASES["default"].setdefault("OPTIONS", {}).update(
    {"connect_timeout": 5, "server_side_binding": True, "pool": True}
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# --- django-mcp-server ------------------------------------------------------------------------
DJANGO_MCP_GLOBAL_SERVER_CONFIG = {"name": "Todo Server", "stateless": True}
DJANGO_MCP_AUTHENTICATION_CLASSES = ["dms_project.todos_dms.authentication.BearerJWTAuthentication"]

# --- the bench's issuer and tenant --------------------------------------------------------------
BENCH_JWKS_URL = os.environ["BENCH_JWKS_URL"]
BENCH_ISSUER = os.environ["BENCH_ISSUER"]
BENCH_AUDIENCE = os.environ["BENCH_AUDIENCE"]
BENCH_TENANT_PK = int(os.environ["BENCH_TENANT_PK"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
