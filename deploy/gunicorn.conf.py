"""gunicorn for production: ``gunicorn -c deploy/gunicorn.conf.py`` (see docs/operations.md).

* uvicorn workers (``uvicorn_worker.UvicornWorker``, the maintained successor of
  ``uvicorn.workers``), ``WEB_CONCURRENCY`` of them (default 2);
* ``reuse_port``: each worker binds its own ``SO_REUSEPORT`` listener, so the kernel spreads
  connections over the workers (one shared socket lets a single worker accept a whole burst of
  keep-alive connections);
* Prometheus multiprocess metrics: the master reads ``MCPAUTH_METRICS_DIR`` from
  ``config.settings`` (env ``PROMETHEUS_MULTIPROC_DIR``, default ``VAR_DIR/metrics``) and exports
  it to the workers it forks; ``on_starting`` empties it before the first worker starts,
  ``child_exit`` tells ``prometheus_client`` a worker is gone;
* logs: the project's ``LOGGING`` (``LOG_FORMAT=text|json``) for the master too, gunicorn's
  own access log off (``mcpauth.access`` writes one line per request) and its error log
  through the same handler;
* connection limits: each worker serves at most ``GUNICORN_LIMIT_CONCURRENCY`` connections
  (uvicorn's ``limit_concurrency``: beyond it a request is answered 503 at once), an idle
  keep-alive connection is closed after ``GUNICORN_KEEPALIVE`` seconds, and a request body must
  arrive within ``MCPAUTH_BODY_TIMEOUT`` (the app answers 408); the systemd unit's
  ``LimitNOFILE`` leaves room for every worker's connections. uvicorn has no time limit for
  the request line and headers: a reverse proxy in front should have one.

Environment: everything ``config/settings.py`` reads (``SECRET_KEY``, ``DATABASE_URL`` ...),
plus ``GUNICORN_BIND`` (default ``127.0.0.1:8000``; several: space-separated),
``WEB_CONCURRENCY``, ``GUNICORN_TIMEOUT`` (seconds, default 60), ``GUNICORN_KEEPALIVE``
(seconds, default 5) and ``GUNICORN_LIMIT_CONCURRENCY`` (per worker, default 1000).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings  # noqa: E402  (settings only; the workers load the app)
from uvicorn_worker import UvicornWorker  # noqa: E402

from mcpauth.observability.multiproc import clean  # noqa: E402

#: Connections one worker serves at once; a request beyond them gets uvicorn's 503.
LIMIT_CONCURRENCY = int(os.environ.get("GUNICORN_LIMIT_CONCURRENCY", "1000"))


class GovernedUvicornWorker(UvicornWorker):
    """``uvicorn_worker.UvicornWorker`` with a bound on its connections (``limit_concurrency``;
    gunicorn's ``keepalive`` below is its ``timeout_keep_alive``)."""

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "limit_concurrency": LIMIT_CONCURRENCY}


wsgi_app = "config.asgi:application"
chdir = str(ROOT)
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split()
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = GovernedUvicornWorker
reuse_port = True
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
#: Seconds an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))

# One access line per request comes from the app (mcpauth.access); gunicorn's is off and so
# is uvicorn's (a logger without handlers, in settings.LOGGING).
accesslog = None
errorlog = "-"
logconfig_dict: dict[str, Any] = copy.deepcopy(settings.LOGGING)
logconfig_dict["loggers"].update(
    {
        "gunicorn.error": {"handlers": ["console"], "propagate": False},
        "gunicorn.access": {"handlers": [], "propagate": False},
    }
)

METRICS_DIR = str(settings.MCPAUTH_METRICS_DIR)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = METRICS_DIR  # prometheus_client's own variable


def on_starting(server: Any) -> None:
    """Before the first worker: drop the previous run's metric files."""
    removed = clean(METRICS_DIR)
    server.log.info("metrics: %s emptied (%d files) for a new run", METRICS_DIR, removed)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges go too (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, METRICS_DIR)
