"""System checks for logs, metrics and traces; errors also stop ASGI startup (``setup()``).

* ``mcpauth.E020`` a ``MCPAUTH_METRICS_ALLOWED_IPS`` entry is not an IP network;
* ``mcpauth.E021`` ``MCPAUTH_TRACES_EXPORTER`` names an exporter that is not installed;
* ``mcpauth.E022`` ``MCPAUTH_LOG_FORMAT`` is neither ``text`` nor ``json``;
* ``mcpauth.E023`` ``MCPAUTH_METRICS_DIR`` is set but not a writable directory;
* ``mcpauth.W020`` ``MCPAUTH_METRICS_TOKEN`` is shorter than 16 characters;
* ``mcpauth.W024`` (``check --deploy``) no ``MCPAUTH_METRICS_DIR``: with several worker
  processes, ``/metrics`` shows only the answering worker's counts.

(The settings' earlier names, ``METRICS_ALLOWED_IPS`` … ``PROMETHEUS_MULTIPROC_DIR``, are still
read: see :mod:`mcpauth.observability.conf`.)
"""

from __future__ import annotations

import os
from typing import Any

from django.core import checks

from mcpauth.observability.conf import LOG_FORMATS, get_settings

MIN_METRICS_TOKEN = 16


@checks.register("mcpauth")
def check_observability(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    conf = get_settings()
    messages: list[checks.CheckMessage] = []
    if conf.metrics_invalid_networks:
        messages.append(
            checks.Error(
                "MCPAUTH_METRICS_ALLOWED_IPS has entries that are not IP networks: "
                + ", ".join(repr(v[:60]) for v in conf.metrics_invalid_networks),
                hint="Use addresses or CIDR networks, space- or comma-separated, e.g. "
                "'10.0.0.0/8 192.0.2.7'.",
                id="mcpauth.E020",
            )
        )
    if conf.trace_exporters:
        from mcpauth.observability.tracing import exporter_names

        known = exporter_names()
        unknown = [name for name in conf.trace_exporters if name not in known]
        if unknown:
            messages.append(
                checks.Error(
                    f"MCPAUTH_TRACES_EXPORTER names exporters that are not installed: {unknown}.",
                    hint=f"Use one of {sorted(known)}, or 'none' (tracing off).",
                    id="mcpauth.E021",
                )
            )
    if conf.log_format not in LOG_FORMATS:
        messages.append(
            checks.Error(
                f"MCPAUTH_LOG_FORMAT={conf.log_format[:20]!r} is not a log format.",
                hint="Use 'text' (the default) or 'json'.",
                id="mcpauth.E022",
            )
        )
    path = conf.multiproc_dir
    if path and (not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK)):
        messages.append(
            checks.Error(
                f"MCPAUTH_METRICS_DIR {path!r} is not a writable directory.",
                hint="Point MCPAUTH_METRICS_DIR at a directory the server's workers may write "
                "(one per server, emptied at its start: manage.py metrics_clean --yes), or "
                "leave it unset to keep metrics per process.",
                id="mcpauth.E023",
            )
        )
    if conf.metrics_token and len(conf.metrics_token) < MIN_METRICS_TOKEN:
        messages.append(
            checks.Warning(
                f"MCPAUTH_METRICS_TOKEN is shorter than {MIN_METRICS_TOKEN} characters.",
                hint="Use a long random value, e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`.",
                id="mcpauth.W020",
            )
        )
    return messages


@checks.register("mcpauth", deploy=True)
def check_metrics_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if get_settings().multiproc_dir:
        return []
    return [
        checks.Warning(
            "MCPAUTH_METRICS_DIR is not set: metrics are kept per process, so with several "
            "workers /metrics shows only the counts of the worker that answers.",
            hint="Set MCPAUTH_METRICS_DIR to a directory shared by one server's workers, emptied "
            "when the server starts (manage.py metrics_clean --yes).",
            id="mcpauth.W024",
        )
    ]
