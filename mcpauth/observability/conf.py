"""Typed settings for logs, metrics and traces, rebuilt on ``setting_changed``.

* ``LOG_FORMAT`` (``text``): ``text`` or ``json``;
* ``PROMETHEUS_MULTIPROC_DIR`` (``VAR_DIR/metrics``): the multiprocess metrics directory;
* ``METRICS_ALLOWED_IPS`` (none): networks besides loopback that may read ``/metrics``;
* ``METRICS_TOKEN`` (none): a bearer token that may read ``/metrics`` from anywhere;
* ``OTEL_TRACES_EXPORTER`` (none: tracing off), ``OTEL_SDK_DISABLED`` and
  ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (which exporter ``otlp`` is); every other
  ``OTEL_*`` variable is read by the OpenTelemetry SDK itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings as dj_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from mcpauth.conf import split_list

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


@lru_cache(maxsize=1)
def get_settings() -> ObservabilitySettings:
    s = dj_settings
    networks, invalid = parse_networks(split_list(getattr(s, "METRICS_ALLOWED_IPS", ())))
    exporters: tuple[str, ...] = ()
    if not getattr(s, "OTEL_SDK_DISABLED", False):
        exporters = tuple(
            e.lower()
            for e in split_list(getattr(s, "OTEL_TRACES_EXPORTER", ""))
            if e.lower() != "none"
        )
    return ObservabilitySettings(
        log_format=str(getattr(s, "LOG_FORMAT", "text") or "text").lower(),
        multiproc_dir=str(getattr(s, "PROMETHEUS_MULTIPROC_DIR", "") or ""),
        metrics_networks=networks,
        metrics_invalid_networks=invalid,
        metrics_token=str(getattr(s, "METRICS_TOKEN", "") or ""),
        trace_exporters=exporters,
        otlp_protocol=str(getattr(s, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc") or "grpc"),
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
    "MCPAUTH_TRUSTED_PROXIES",
}


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting in _WATCHED:
        get_settings.cache_clear()
