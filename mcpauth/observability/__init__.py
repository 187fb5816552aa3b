"""Operating the server: Prometheus metrics, OpenTelemetry traces and structured logs.

* :mod:`~mcpauth.observability.metrics`: the metrics (multiprocess ``prometheus_client``);
* :mod:`~mcpauth.observability.views`: ``/metrics`` and who may read it;
* :mod:`~mcpauth.observability.tracing`: the SDK set-up (``OTEL_*``) and our spans;
* :mod:`~mcpauth.observability.logs`: ``LOG_FORMAT`` (text, json) and the access line;
* :mod:`~mcpauth.observability.request`: what each ``/mcp`` request reports, called from the
  governance pipeline (``mcpauth.edge.pipeline``) at five points, and the one audit-row writer of
  ``/mcp`` calls;
* :mod:`~mcpauth.observability.multiproc`: emptying the metrics directory at server start.

:func:`setup` runs once when the ASGI application is built (``mcpauth.asgi``).
"""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured


def prepare_metrics_dir() -> str:
    """Create ``MCPAUTH_METRICS_DIR`` (when set) and export it as ``PROMETHEUS_MULTIPROC_DIR``,
    which ``prometheus_client`` reads itself; return it (``""``: metrics per process).

    Run by ``mcpauth``'s ``AppConfig.ready()``, before anything counts; a directory that cannot
    be made is reported by ``mcpauth.E023``.
    """
    import contextlib
    import os

    from mcpauth.observability.conf import get_settings

    directory = get_settings().multiproc_dir
    if directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        with contextlib.suppress(OSError):
            os.makedirs(directory, exist_ok=True)
    return directory


def setup() -> None:
    """Check the configuration, install tracing when an exporter is named, route warnings."""
    from mcpauth.observability import logs, tracing
    from mcpauth.observability.checks import check_observability
    from mcpauth.observability.conf import get_settings

    errors = [m for m in check_observability() if m.is_serious()]
    if errors:
        lines = [f"{m.id}: {m.msg} HINT: {m.hint}" for m in errors]
        raise ImproperlyConfigured("observability is misconfigured:\n  " + "\n  ".join(lines))
    conf = get_settings()
    logs.ensure_handler(conf.log_format)  # access lines in a project without LOGGING too
    if conf.log_format == "json":
        logging.captureWarnings(True)  # warnings become log records, so JSON lines too
    tracing.configure(conf)
