"""Django settings, driven by environment variables with development-friendly defaults.

The reference project: it adds ``mcpauth`` and ``audit`` exactly as any project does (see
docs/configuration.md), and maps its environment variables (docs/configuration.md has them all)
onto the apps' prefixed settings. Only this module reads the environment; apps read their
settings through their own typed accessor (``mcpauth.conf``, ``audit.conf``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    raw = os.environ.get(name, default)
    return [item.strip() for item in raw.replace(",", " ").split() if item.strip()]


TESTING = "pytest" in sys.modules or sys.argv[1:2] == ["test"]
DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if DEBUG or TESTING:
        SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"
    else:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set the SECRET_KEY environment variable, or set DEBUG=1 for "
            "local development (make run does this for you)."
        )

# The public URL; the MCP resource is MCPAUTH_BASE_URL + MCPAUTH_PATH (/mcp).
MCPAUTH_BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8000").rstrip("/")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost 127.0.0.1 [::1]")
_base_host = MCPAUTH_BASE_URL.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
if _base_host and _base_host not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append(_base_host)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", MCPAUTH_BASE_URL)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # django-ninja's own static files: /api/docs serves Swagger UI from here, not from a CDN.
    "ninja",
    "mcpauth",
    "audit",
    "todos",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
# DATABASE_URL, e.g. postgres://user@127.0.0.1:5432/mcp (psycopg 3). Default: SQLite in var/.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that accepts TCP but never answers must not hang requests (libpq option).
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    _pg_options.setdefault("connect_timeout", int(os.environ.get("DATABASE_CONNECT_TIMEOUT", "5")))
    # Server-side parameter binding, and psycopg preparing a statement once it has run five times
    # on a connection (Django's default is never: prepare_threshold=None), so PostgreSQL stops
    # re-parsing and re-planning the same few statements every call makes. An empty
    # DATABASE_PREPARE_THRESHOLD never prepares (poolers must run in session mode anyway: the
    # tenant switch is a session setting).
    _pg_options.setdefault("server_side_binding", env_bool("DATABASE_SERVER_SIDE_BINDING", True))
    _prepare = os.environ.get("DATABASE_PREPARE_THRESHOLD", "5").strip()
    if _prepare and not (_prepare.isascii() and _prepare.isdigit()):
        raise ImproperlyConfigured(
            f"DATABASE_PREPARE_THRESHOLD must be a whole number >= 0, or empty to never prepare "
            f"statements; got {_prepare!r}"
        )
    _pg_options.setdefault("prepare_threshold", int(_prepare) if _prepare else None)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache --------------------------------------------------------------------------------
# REDIS_URL, e.g. redis://127.0.0.1:6379/0. Without it, an in-process LocMem cache is used,
# which is fine for the single-process quickstart but does not share rate limits between workers.
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # mcpauth's subclass of Django's RedisCache: one connection pool per process, and one
    # round trip per counter increment.
    _shared_cache = {
        "BACKEND": "mcpauth.admission.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
    CACHES = {
        "default": {**_shared_cache, "KEY_PREFIX": "mcp"},
        "ratelimit": {**_shared_cache, "KEY_PREFIX": "mcp-rl"},
    }
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "ratelimit": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "ratelimit",
        },
    }
# django-ratelimit's setting, which mcpauth's rate limits count in (default: "default")
RATELIMIT_USE_CACHE = "ratelimit"
# mcpauth uses django-ratelimit's counting (not its app): mcpauth.E014 reports a missing alias,
# mcpauth.W010 a cache not shared between workers while DEBUG is off.

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- Logs, metrics and traces (see mcpauth/observability/) ---------------------------------
# LOG_FORMAT: "text" (default) or "json" (one JSON object per line). Each /mcp request logs one
# access line on "mcpauth.access"; uvicorn's own access log is switched off here (a logger
# without handlers is one uvicorn skips), so there are not two.
MCPAUTH_LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower() or "text"
_log_formatter = "json" if MCPAUTH_LOG_FORMAT == "json" else "text"  # else: mcpauth.E022
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "mcpauth.observability.logs.TextFormatter"},
        "json": {"()": "mcpauth.observability.logs.JSONFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": _log_formatter}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # uvicorn's and gunicorn's worker loggers write through our handler and format
        "uvicorn": {"handlers": ["console"], "propagate": False},
        "uvicorn.error": {"handlers": [], "propagate": True},
        "uvicorn.access": {"handlers": [], "propagate": False},
    },
}

# Prometheus metrics are kept in multiprocess mode, so every worker's counts add up: one
# directory of mmap files shared by the workers of one server (mcpauth exports it to
# prometheus_client and creates it). A server's supervisor empties it at start (deploy/
# gunicorn.conf.py, `make run` through `manage.py metrics_clean`).
MCPAUTH_METRICS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(VAR_DIR / "metrics")
# Who may read /metrics: loopback by default; plus these networks, or a bearer token.
MCPAUTH_METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS")
MCPAUTH_METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# OpenTelemetry tracing is off unless an exporter is named (console, otlp, otlp_proto_http ...).
# Everything else is the SDK's own standard OTEL_* variables (OTEL_SERVICE_NAME,
# OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, OTEL_PROPAGATORS, OTEL_BSP_* ...).
MCPAUTH_TRACES_EXPORTER = os.environ.get("OTEL_TRACES_EXPORTER", "")
OTEL_SDK_DISABLED = env_bool("OTEL_SDK_DISABLED", False)
# which exporter "otlp" means: "grpc" (the Python SDK's default) or "http/protobuf"
MCPAUTH_OTLP_PROTOCOL = os.environ.get(
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
)

# --- mcpauth (see mcpauth/conf.py for every default) -----------------------------------------
MCPAUTH_ISSUER = os.environ.get("MCPAUTH_ISSUER", "")
MCPAUTH_ISSUERS = os.environ.get("MCPAUTH_ISSUERS", "")  # "ISSUER[=JWKS_URL] ..." (mcpauth.conf)
MCPAUTH_AUDIENCE = os.environ.get("MCPAUTH_AUDIENCE", "")
MCPAUTH_JWKS_URL = os.environ.get("MCPAUTH_JWKS_URL", "")
MCPAUTH_TENANT_CLAIM = os.environ.get("MCPAUTH_TENANT_CLAIM", "oid")
MCPAUTH_AUTO_PROVISION_TENANTS = env_bool("MCPAUTH_AUTO_PROVISION_TENANTS", True)
MCPAUTH_RATE_LIMIT = os.environ.get("MCPAUTH_RATE_LIMIT", "120/m")
MCPAUTH_RATE_LIMIT_FAIL_OPEN = env_bool("MCPAUTH_RATE_LIMIT_FAIL_OPEN", False)
# the most calls a worker counts in Redis at once (mcpauth.admission.leases); 1: every call
_lease = os.environ.get("MCPAUTH_RATE_LIMIT_LEASE", "32").strip()
MCPAUTH_RATE_LIMIT_LEASE: int | str = int(_lease) if _lease.isdigit() else _lease  # else E017
MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = os.environ.get("MCPAUTH_UNAUTHENTICATED_RATE_LIMIT", "30/m")
MCPAUTH_TRUSTED_PROXIES = int(os.environ.get("MCPAUTH_TRUSTED_PROXIES", "0"))
MCPAUTH_ALLOWED_ORIGINS = env_list("MCPAUTH_ALLOWED_ORIGINS")
MCPAUTH_LOOPBACK_ORIGINS_ANY_PORT = env_bool("MCPAUTH_LOOPBACK_ORIGINS_ANY_PORT", False)
MCPAUTH_BODY_TIMEOUT = float(os.environ.get("MCPAUTH_BODY_TIMEOUT", "30"))
# Other systems tools call (docs/downstream.md): a JSON object of
# name -> declaration, and the keys that encrypt stored downstream secrets (newest first).
try:
    MCPAUTH_DOWNSTREAMS = json.loads(os.environ.get("MCPAUTH_DOWNSTREAMS") or "{}")
except ValueError as exc:
    raise ImproperlyConfigured(f"MCPAUTH_DOWNSTREAMS is not valid JSON: {exc}") from None
MCPAUTH_ENCRYPTION_KEYS = env_list("MCPAUTH_ENCRYPTION_KEYS")
# Secrets sealing the multi-round-trip requestState (MCP 2026-07-28), each >= 32 bytes: the first
# seals, all open. Unset: derived from SECRET_KEY (mcpauth.W060 in production).
MCPAUTH_REQUEST_STATE_KEYS = env_list("MCPAUTH_REQUEST_STATE_KEYS")
SCALEKIT_ENVIRONMENT_URL = os.environ.get("SCALEKIT_ENVIRONMENT_URL", "")
SCALEKIT_RESOURCE_ID = os.environ.get("SCALEKIT_RESOURCE_ID", "")
MCPAUTH_DEV_KEY_PATH = VAR_DIR / "dev-issuer-key.pem"  # the development issuer's RSA key

# --- audit (see audit/conf.py) -----------------------------------------------------------------
AUDIT_RETENTION_DAYS = int(os.environ.get("AUDIT_RETENTION_DAYS", "90"))
AUDIT_RECORD_ALL_METHODS = env_bool("AUDIT_RECORD_ALL_METHODS", True)
# The Ed25519 key that signs audit seals (never SECRET_KEY); see docs/audit.md.
AUDIT_SEAL_KEY_PATH = os.environ.get("AUDIT_SEAL_KEY_PATH", "")
# without it: a development key here, with DEBUG on or under the tests
AUDIT_DEV_SEAL_KEY_PATH = VAR_DIR / "audit-seal-key.pem"
AUDIT_DEV_SEAL_KEY = TESTING
AUDIT_SEAL_VERIFY_KEYS = env_list("AUDIT_SEAL_VERIFY_KEYS")
AUDIT_SETTLE_SECONDS = float(os.environ.get("AUDIT_SETTLE_SECONDS", "10"))
