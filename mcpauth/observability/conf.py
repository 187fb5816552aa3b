"""Typed settings for logs, metrics and traces, rebuilt on ``setting_changed``.

Each setting is prefixed; the name in parentheses is the one earlier versions read, still
accepted when the prefixed one is not set:

* ``MCPAUTH_LOG_FORMAT`` (``LOG_FORMAT``; default ``text``): ``text`` or ``json`` for
  :class:`~mcpauth.observability.logs.JSONFormatter` users; checked by ``mcpauth.E022``;
* ``MCPAUTH_METRICS_DIR`` (``PROMETHEUS_MULTIPROC_DIR``, also as an environment variable,
  which ``prometheus_client`` reads itself): the multiprocess metrics directory shared by one
  server's workers. Unset: metrics are kept per process, and ``/metrics`` shows the counts of
  the worker that answers (right for one process; ``check --deploy`` says ``mcpauth.W024``);
* ``MCPAUTH_METRICS_ALLOWED_IPS`` (``METRICS_ALLOWED_IPS``; none): networks besides loopback
  that may read ``/metrics``;
* ``MCPAUTH_METRICS_TOKEN`` (``METRICS_TOKEN``; none): a bearer token that may read
  ``/metrics`` from anywhere;
* ``MCPAUTH_TRACES_EXPORTER`` (``OTEL_TRACES_EXPORTER``; none: tracing off) and
  ``MCPAUTH_OTLP_PROTOCOL`` (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``; ``grpc``: which exporter
  ``otlp`` is); ``OTEL_SDK_DISABLED`` turns tracing off. Every other ``OTEL_*`` variable is
  read by the OpenTelemetry SDK itself.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings as dj_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from mcpauth.conf import setting, split_list

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
LOG_FORMATS = ("text", "json")


def parse_networks(values: tuple[str, ...]) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
    """``(networks, invalid entries)`` for ``METRICS_ALLOWED_IPS`` (an address is a /32)."""
    networks: list[IPNetwork] = []
    invalid: list[str] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            invalid.append(value)
    return tuple(networks), tuple(invalid)


@dataclass(frozen=True)
class ObservabilitySettings:
    log_format: str = "text"
    multiproc_dir: str = ""
    #: Networks allowed to read ``/metrics`` besides loopback (loopback is always allowed
    #: for a request that came straight from it).
    metrics_networks: tuple[IPNetwork, ...] = ()
    #: ``METRICS_ALLOWED_IPS`` entries that are not networks (``mcpauth.E020``).
    metrics_invalid_networks: tuple[str, ...] = ()
    metrics_token: str = ""
    #: Exporter names from ``OTEL_TRACES_EXPORTER`` (``none`` dropped); empty means off.
    trace_exporters: tuple[str, ...] = ()
    #: What ``otlp`` means: ``grpc`` or ``http/protobuf`` (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``).
    otlp_protocol: str = "grpc"
    #: How many ``X-Forwarded-For`` hops are trusted (``MCPAUTH_TRUSTED_PROXIES``).
    trusted_proxies: int = 0

    @property
    def tracing(self) -> bool:
        return bool(self.trace_exporters)


def configured_metrics_dir() -> str:
    """``MCPAUTH_METRICS_DIR``, else ``PROMETHEUS_MULTIPROC_DIR`` (setting, then environment),
    else ``""`` (metrics per process)."""
    value = setting("MCPAUTH_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR", default=None)
    if value is None:
        value = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    return str(value or "")


@lru_cache(maxsize=1)
def get_settings() -> ObservabilitySettings:
    s = dj_settings
    allowed = setting("MCPAUTH_METRICS_ALLOWED_IPS", "METRICS_ALLOWED_IPS", default=())
    networks, invalid = parse_networks(split_list(allowed))
    exporters: tuple[str, ...] = ()
    if not getattr(s, "OTEL_SDK_DISABLED", False):
        named = setting("MCPAUTH_TRACES_EXPORTER", "OTEL_TRACES_EXPORTER", default="")
        exporters = tuple(e.lower() for e in split_list(named) if e.lower() != "none")
    protocol = setting("MCPAUTH_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", default="")
    return ObservabilitySettings(
        log_format=str(setting("MCPAUTH_LOG_FORMAT", "LOG_FORMAT", default="") or "text").lower(),
        multiproc_dir=configured_metrics_dir(),
        metrics_networks=networks,
        metrics_invalid_networks=invalid,
        metrics_token=str(setting("MCPAUTH_METRICS_TOKEN", "METRICS_TOKEN", default="") or ""),
        trace_exporters=exporters,
        otlp_protocol=str(protocol or "grpc"),
        trusted_proxies=int(getattr(s, "MCPAUTH_TRUSTED_PROXIES", 0) or 0),
    )


_WATCHED = {
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "METRICS_ALLOWED_IPS",
    "METRICS_TOKEN",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
}


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting in _WATCHED or setting.startswith("MCPAUTH_"):
        get_settings.cache_clear()
