"""Per-call CPU of the governed ``/mcp`` path, in process: what observability costs.

Drives ``config.asgi.application`` directly (no HTTP server, no socket) with real requests
(development issuer token, SQLite in a temporary ``VAR_DIR`` unless ``DATABASE_URL`` is set,
in-process cache) and reports the process CPU time per call (``time.process_time``: this
process's user + system time, so the database server's work is not counted), as the median
of several rounds. Run it before and after a change to the hot path::

    .venv/bin/python bench/obs_overhead.py [--calls 400] [--rounds 7] [--output result.json]
    LOG_FORMAT=json .venv/bin/python bench/obs_overhead.py --output json.json 2>/dev/null
    OTEL_TRACES_EXPORTER=console .venv/bin/python bench/obs_overhead.py >/dev/null

Access lines and spans go wherever the settings send them (stderr, stdout); redirect them
when they are on. Nothing listens on a port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asgi_driver import call, lifespan

ROOT = Path(__file__).resolve().parent.parent


def _setup() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="mcp-obs-bench-"))
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("MCPAUTH_RATE_LIMIT", "100000000/m")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _body(tool: str, arguments: dict[str, Any], rpc_id: int) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": rpc_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    ).encode()


async def _run(calls: int, rounds: int) -> dict[str, Any]:
    from config.asgi import application
    from mcpauth.identity import devissuer

    token = devissuer.mint(client_id="bench-obs", scopes="todo:read todo:write", tenant="bench")
    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"mcp-protocol-version", b"2025-11-25"),
        (b"user-agent", b"bench-obs"),
    ]

    scenarios = {
        "list_todos": lambda i: _body("list_todos", {"limit": 5}, i),
        "create_todo": lambda i: _body("create_todo", {"title": f"bench {i}"}, i),
    }
    out: dict[str, Any] = {}
    async with lifespan(application):
        for name, make in scenarios.items():
            for i in range(50):  # warm thread pools, connections and caches
                assert (await call(application, make(i), headers))[0] == 200
            per_call = []
            for r in range(rounds):
                t0 = time.process_time()
                for i in range(calls):
                    status, _ = await call(application, make(r * calls + i), headers)
                    assert status == 200, status
                per_call.append((time.process_time() - t0) / calls * 1e6)
            out[name] = {
                "cpu_us_per_call_median": round(statistics.median(per_call), 1),
                "cpu_us_per_call_min": round(min(per_call), 1),
                "rounds": rounds,
                "calls_per_round": calls,
            }
    return out


def _install_discarding_tracer() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from mcpauth.observability import tracing

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracing.install(provider)


def _micro(n: int = 20000) -> dict[str, float]:
    """Microseconds per call of the observability code alone (best of 3 x ``n``)."""
    import timeit

    from mcpauth.observability import metrics, request, tracing
    from mcpauth.runtime.context import CallContext

    scope = {
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")] * 3,
        "path": "/mcp",
    }

    async def send(message: Any) -> None:
        return None

    def whole_request() -> None:
        ctx = CallContext(request_id="r", client_ip="127.0.0.1", user_agent="bench")
        ctx.method, ctx.tool = "tools/call", "list_todos"
        request.request_started(ctx, scope, send)
        request.request_parsed(ctx)
        ctx.status, ctx.outcome = 200, "ok"
        request.request_finished(ctx)

    cases = {
        "mcp_requests_total inc": lambda: metrics.request_done("tools/call", 200),
        "tool call counter + histogram": lambda: metrics.tool_call_done("list_todos", "ok", 0.002),
        "audit write histogram": lambda: metrics.audit_written(0.0005),
        "step() while tracing is off": lambda: tracing.step("mcp.token").__enter__(),
        "one request: start, parse, finish (metrics, access line if logged, span if on)": (
            whole_request
        ),
    }
    return {
        label: round(min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6, 2)
        for label, fn in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", help="write the JSON result here (default: stderr)")
    parser.add_argument(
        "--micro", action="store_true", help="also time the observability code alone (µs/call)"
    )
    parser.add_argument(
        "--trace-discard",
        action="store_true",
        help="trace every request through the SDK (BatchSpanProcessor) into an exporter that "
        "drops the spans: what tracing costs without an exporter's own I/O",
    )
    args = parser.parse_args()
    _setup()
    if args.trace_discard:
        _install_discarding_tracer()
    out = asyncio.run(_run(args.calls, args.rounds))
    if args.micro:
        out["micro_us"] = _micro()
    result = json.dumps(out, indent=2)
    if args.output:
        Path(args.output).write_text(result + "\n")
    else:
        print(result, file=sys.stderr)


if __name__ == "__main__":
    main()
