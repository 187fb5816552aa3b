"""Prometheus metrics for ``/mcp``, shared by every worker (``prometheus_client`` multiprocess).

With ``MCPAUTH_METRICS_DIR`` set, each worker writes its counts to mmap files there (one set per
process id); ``/metrics`` (:mod:`mcpauth.observability.views`) adds them all up, so 20 calls
spread over two workers read as 20; the server's supervisor empties it at start. Without it,
the metrics are this process's own (``prometheus_client``'s default registry).

Label values are bounded, and no label names a tenant or a client:

* ``tool``: a registered tool's name, or ``_unknown`` for any other name;
* ``method``: a JSON-RPC method of the MCP client vocabulary (``tools/call``, ``initialize``,
  ``notifications/initialized`` ...), ``response``, ``HTTP GET`` (and the other HTTP verbs a
  non-POST request may use), else ``other``;
* ``outcome``: the audit outcome (``audit.models.Outcome``);
* ``reason``: a refusal's typed reason (``expired``, ``bad_signature``, ``insufficient_scope``
  ...; code-defined), else ``other``;
* ``status``: the HTTP status code; ``result``: ``ok`` or ``error``.

The hot path costs a handful of mmap writes per request: label children are cached here, so an
update is a dict lookup and one locked ``struct.pack_into`` per value.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import mcp_types
from prometheus_client import Counter, Histogram, values

from mcpauth.observability import prepare_metrics_dir
from mcpauth.runtime.registry import registry

# prometheus_client reads the variable itself (in every worker, when a value opens its file),
# so it is exported before any metric below exists (AppConfig.ready() did so already)
MULTIPROCESS = bool(prepare_metrics_dir())
if MULTIPROCESS:
    if values.ValueClass is values.MutexValue:
        # prometheus_client was imported before the directory was exported: switch it to
        # multiprocess values now, before any metric below exists.
        values.ValueClass = values.MultiProcessValue()

UNKNOWN_TOOL = "_unknown"
OTHER = "other"


def _methods(union: Any) -> set[str]:
    names: set[str] = set()
    for model in typing.get_args(union):
        field = getattr(model, "model_fields", {}).get("method")
        if field is not None:
            names.update(a for a in typing.get_args(field.annotation) if isinstance(a, str))
    return names


#: The method label's vocabulary: everything an MCP client may send, plus replies and the
#: HTTP verbs the governance pipeline names non-POST requests by.
KNOWN_METHODS = frozenset(
    {
        *_methods(mcp_types.ClientRequest),
        *_methods(mcp_types.ClientNotification),
        "response",
        *(f"HTTP {verb}" for verb in ("GET", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH")),
    }
)
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

TOOL_CALLS = Counter(
    "mcp_tool_calls_total",
    "tools/call requests by tool and the outcome their audit row records.",
    ["tool", "outcome"],
)
TOOL_CALL_DURATION = Histogram(
    "mcp_tool_call_duration_seconds",
    "Admitted tools/call requests: seconds from the request's arrival to its audit row.",
    ["tool"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS = Counter(
    "mcp_requests_total",
    "Requests to /mcp by JSON-RPC method and HTTP status.",
    ["method", "status"],
)
AUTH_FAILURES = Counter(
    "mcp_auth_failures_total",
    "Requests refused by authentication or authorization (401/403), by reason.",
    ["reason"],
)
RATE_LIMITED = Counter(
    "mcp_rate_limited_total",
    "Requests refused with 429 (per-client limit or the unauthenticated per-IP budget).",
)
AUDIT_WRITE = Histogram(
    "mcp_audit_write_seconds",
    "Seconds to write one /mcp audit row (successful writes).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
JWKS_REFRESH = Counter(
    "mcp_jwks_refresh_total",
    "Fetches of the identity provider's signing keys, by result.",
    ["result"],
)


def tool_label(name: str) -> str:
    return name if name in registry else UNKNOWN_TOOL


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER


def reason_label(reason: str) -> str:
    return reason if _REASON.match(reason) else OTHER


class _Children:
    """Label children of one metric, cached by label values (skips ``labels()``'s lock)."""

    __slots__ = ("cache", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.cache: dict[tuple[str, ...], Any] = {}

    def get(self, *labels: str) -> Any:
        child = self.cache.get(labels)
        if child is None:
            child = self.cache[labels] = self.metric.labels(*labels)
        return child


_tool_calls = _Children(TOOL_CALLS)
_tool_durations = _Children(TOOL_CALL_DURATION)
_requests = _Children(REQUESTS)
_auth_failures = _Children(AUTH_FAILURES)
_jwks = _Children(JWKS_REFRESH)


def request_done(method: str, status: int) -> None:
    """One ``/mcp`` request answered with ``status`` (labels made bounded here)."""
    _requests.get(method_label(method), str(status)).inc()


def tool_call_done(tool: str, outcome: str, seconds: float | None) -> None:
    """One ``tools/call`` with its audit outcome; ``seconds`` only for an admitted call."""
    label = tool_label(tool)
    _tool_calls.get(label, outcome).inc()
    if seconds is not None:
        _tool_durations.get(label).observe(seconds)


def auth_failure(reason: str) -> None:
    _auth_failures.get(reason_label(reason)).inc()


def rate_limited() -> None:
    RATE_LIMITED.inc()


def audit_written(seconds: float) -> None:
    AUDIT_WRITE.observe(seconds)


def jwks_refresh(result: str) -> None:
    """A JWKS fetch finished: ``ok`` or ``error``."""
    _jwks.get("ok" if result == "ok" else "error").inc()
