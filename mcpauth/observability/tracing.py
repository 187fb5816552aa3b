"""OpenTelemetry tracing for ``/mcp``: off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

:func:`configure` builds the SDK's ``TracerProvider`` (resource, sampler, span limits and batch
settings all come from the standard ``OTEL_*`` variables, read by the SDK itself), adds one span
processor per named exporter (``console`` prints each span as it ends; any other exporter is
batched) and makes it the global provider, which FastMCP's own instrumentation uses too.

One request is one trace branch:

* the **request span** (``POST /mcp``, kind SERVER; see :mod:`mcpauth.observability.request`)
  continues the caller's trace from the ``traceparent`` header, else from
  ``params._meta.traceparent`` (MCP 2026-07-28), else starts one;
* child spans for the admission steps (``mcp.token``, ``mcp.tenant_scope``,
  ``mcp.rate_limit``), from :func:`step`. Admission first tries the event loop with cached data
  only (``cache_only``) and, when something is not cached, starts over in a worker thread; the
  event-loop attempt's steps are therefore only timed (two clock reads each) and become spans
  once the attempt stands, so a trace shows the steps that decided, each once;
* FastMCP's own SERVER span (``tools/call <tool>``, opened at its middleware seam): FastMCP
  parents it on the *current* span when that is valid and reads ``_meta`` only otherwise
  (``fastmcp.telemetry.extract_trace_context``), so it becomes a child of the request span
  instead of a second trace;
* under it, ``mcp.tool`` (the tool function) and ``mcp.audit`` (the audit row).

No span carries a token or an argument value. When tracing is off, :func:`step` returns one
shared ``nullcontext`` and nothing else runs: the request's trace id (for its audit row and
access line) is then only the caller's, parsed from its ``traceparent``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import fastmcp
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode

from mcpauth.caching.localcache import cache_only_active
from mcpauth.observability.conf import ObservabilitySettings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

INSTRUMENTATION = "mcpauth"
DEFAULT_SERVICE_NAME = "django-mcp-governed"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-|$)")
_ZERO_TRACE = "0" * 32
_NULL: AbstractContextManager[Any] = nullcontext()
_MAX_CARRIER_VALUE = 512

#: The tracer of our spans; ``None`` while tracing is off.
_tracer: Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


def trace_id_of(traceparent: str | None) -> str:
    """The trace id of a W3C ``traceparent`` value, or ``""`` when it is not a valid one."""
    if not traceparent:
        return ""
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None or match.group(1) == "ff" or match.group(2) == _ZERO_TRACE:
        return ""
    if match.group(3) == "0" * 16:
        return ""
    return match.group(2)


def meta_carrier(message: Mapping[str, Any] | None) -> dict[str, str]:
    """``traceparent``/``tracestate`` from ``params._meta`` (strings only), for extraction."""
    if not message:
        return {}
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return {}
    carrier: dict[str, str] = {}
    for key in ("traceparent", "tracestate"):
        value = meta.get(key)
        if isinstance(value, str) and len(value) <= _MAX_CARRIER_VALUE:
            carrier[key] = value
    return carrier


def format_trace_id(trace_id: int) -> str:
    return trace.format_trace_id(trace_id) if trace_id else ""


# --- set-up -------------------------------------------------------------------------------


def _exporter_class(name: str, conf: ObservabilitySettings) -> Any:
    if name == "otlp":
        name = "otlp_proto_http" if conf.otlp_protocol.startswith("http") else "otlp_proto_grpc"
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise LookupError(f"no OpenTelemetry span exporter named {name!r} is installed")
    return next(iter(found)).load()


def exporter_names() -> set[str]:
    """Exporter names ``OTEL_TRACES_EXPORTER`` may use (installed entry points, and ``otlp``)."""
    return {ep.name for ep in entry_points(group="opentelemetry_traces_exporter")} | {"otlp"}


def configure(conf: ObservabilitySettings) -> TracerProvider | None:
    """Build and install the SDK provider when ``conf`` names exporters; else leave tracing off."""
    if not conf.tracing or _tracer is not None:
        sync_fastmcp_spans()
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, detectors
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # sampler and limits from OTEL_* (the SDK)
    for name in conf.trace_exporters:
        exporter = _exporter_class(name, conf)()
        # the console is for reading along: each span as it ends; anything else is batched
        processor = SimpleSpanProcessor if name == "console" else BatchSpanProcessor
        provider.add_span_processor(processor(exporter))
    install(provider)
    return provider


def install(provider: Any) -> None:
    """Trace with ``provider`` (also made the global one, which FastMCP's spans use)."""
    global _tracer
    if trace.get_tracer_provider() is not provider:
        trace.set_tracer_provider(provider)  # once per process; later calls only warn
        if trace.get_tracer_provider() is not provider:
            log.warning("another global TracerProvider is set: FastMCP's spans go there")
    _tracer = provider.get_tracer(INSTRUMENTATION)
    sync_fastmcp_spans()


def uninstall() -> None:
    """Stop making our spans (the global provider stays: OpenTelemetry sets it once)."""
    global _tracer
    _tracer = None
    sync_fastmcp_spans()


#: FastMCP's own setting, when the environment sets it: then it is the operator's choice.
FASTMCP_MODE_VARIABLE = "FASTMCP_TELEMETRY_MODE"


def sync_fastmcp_spans() -> None:
    """FastMCP's native instrumentation only where a span can go somewhere.

    FastMCP makes its spans and extracts ``_meta`` trace context on every call (``native``)
    even when no OpenTelemetry SDK is installed, where every span is a no-op: about a tenth of
    a call's instructions (``make bench``). With tracing off here and no SDK provider set
    globally by anyone else, its ``telemetry_mode`` is ``off``; as soon as a provider is
    installed (:func:`install`) it is ``native`` again. ``FASTMCP_TELEMETRY_MODE`` in the
    environment is FastMCP's own setting and always wins.
    """
    if os.environ.get(FASTMCP_MODE_VARIABLE):
        return
    sdk_elsewhere = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    fastmcp.settings.telemetry_mode = "native" if _tracer is not None or sdk_elsewhere else "off"


# --- spans --------------------------------------------------------------------------------


#: The admission steps tried on the event loop (``cache_only``) for the current request, kept
#: as ``(name, attributes, start_ns, end_ns, exception)`` until the attempt's fate is known.
_pending: ContextVar[list[Pending] | None] = ContextVar("mcpauth_pending_spans", default=None)
Pending = tuple[str, "Mapping[str, Any] | None", int, int, "BaseException | None"]


class _Deferred:
    """A step inside ``cache_only``: timed now, made a span only if the attempt stands."""

    __slots__ = ("attributes", "name", "pending", "start")

    def __init__(self, name: str, attributes: Mapping[str, Any] | None, pending: list[Pending]):
        self.name = name
        self.attributes = attributes
        self.pending = pending

    def __enter__(self) -> Span:
        self.start = time.time_ns()
        return INVALID_SPAN

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.pending.append((self.name, self.attributes, self.start, time.time_ns(), exc))


def begin_pending(pending: list[Pending]) -> Token[list[Pending] | None]:
    """Collect this request's event-loop admission steps in ``pending``."""
    return _pending.set(pending)


def end_pending(parent: Span, pending: list[Pending], token: Token[list[Pending] | None]) -> None:
    """Make the collected steps children of ``parent``, with the times they really took."""
    assert _tracer is not None
    context = trace.set_span_in_context(parent)
    for name, attributes, start, end, exc in pending:
        span = _tracer.start_span(name, context=context, start_time=start, attributes=attributes)
        if exc is not None and span.is_recording():
            span.set_attribute("error.type", error_type(exc))
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)
    pending.clear()
    _pending.reset(token)


class _Step:
    """A child span of the current one; marks it failed with the exception's reason or type."""

    __slots__ = ("_cm", "_span", "attributes", "name")

    def __init__(self, name: str, attributes: Mapping[str, Any] | None) -> None:
        self.name = name
        self.attributes = attributes

    def __enter__(self) -> Span:
        assert _tracer is not None
        self._cm = _tracer.start_as_current_span(
            self.name,
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        self._span = self._cm.__enter__()
        return self._span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool | None:
        if exc is not None and self._span.is_recording():
            self._span.set_attribute("error.type", error_type(exc))
            self._span.set_status(Status(StatusCode.ERROR))
        return self._cm.__exit__(exc_type, exc, tb)


def error_type(exc: BaseException) -> str:
    """A typed refusal's ``reason`` (``expired``, ``insufficient_scope`` ...), else the class."""
    reason = getattr(exc, "reason", "")
    return reason if isinstance(reason, str) and reason else type(exc).__name__


def step(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """``with step("mcp.token"): ...``: a child span of the current one; a shared no-op while
    tracing is off or when the current span does not record (a trace the sampler dropped)."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return _NULL  # tracing off, or this request's trace was not sampled
    if cache_only_active():
        pending = _pending.get()
        if pending is not None:
            return _Deferred(name, attributes, pending)
    return _Step(name, attributes)


def parent_context(headers: Mapping[str, str], meta: Mapping[str, str]) -> Context:
    """The caller's context: from the HTTP headers, else from ``_meta``; else a new root.

    The header wins when both carry one: an HTTP client's own instrumentation adds it below
    the span that filled ``_meta``, so it is the nearer parent (FastMCP decides the same way).
    """
    ctx = propagate.extract(headers)
    if trace.get_current_span(ctx).get_span_context().is_valid or not meta:
        return ctx
    return propagate.extract(meta)


def start_server_span(
    name: str, parent: Context, start_ns: int, attributes: Mapping[str, Any]
) -> tuple[Span, object]:
    """Start the request span at ``start_ns`` and make it current; ``(span, detach token)``."""
    assert _tracer is not None
    span = _tracer.start_span(
        name, context=parent, kind=SpanKind.SERVER, start_time=start_ns, attributes=attributes
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_server_span(span: Span, token: object, attributes: Mapping[str, Any], error: bool) -> None:
    if span.is_recording():
        span.set_attributes(attributes)
        if error:
            span.set_status(Status(StatusCode.ERROR))
    span.end()
    try:
        otel_context.detach(token)  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - attached in another context: nothing to restore
        log.debug("request span context was not detached", exc_info=True)
