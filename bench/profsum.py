"""Summarise a ``py-spy record --format raw`` profile (collapsed stacks) as text.

Each line of the input is ``frame;frame;...;frame COUNT``, root first, where a frame is
``function (path:line)``; with ``--threads`` the first frame names the thread. We print:

* threads: the share of samples on the event loop vs worker threads;
* components (inclusive, overlapping): the share of samples whose stack passes through a
  governance step (JWT verify, tenant, rate limit, audit write, commit...);
* buckets (exclusive, sum to 100%): each sample charged to the innermost frame that belongs to
  a known layer (psycopg, Django ORM, Redis, JWT/crypto, pydantic, FastMCP/MCP, thread hops...);
* the top frames by self time and by inclusive time, aggregated by function (lines merged).

``python bench/profsum.py profile.raw [--top 30]``
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str

    @property
    def label(self) -> str:
        return f"{self.func} ({short_path(self.file)})"


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for marker in ("/work/main/",):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse_frame(text: str) -> Frame:
    m = _FRAME_RE.match(text.strip())
    if not m:
        return Frame(text.strip(), "")
    return Frame(m.group("func"), m.group("file") or "")


def parse(lines: Iterable[str]) -> list[tuple[list[Frame], int]]:
    stacks: list[tuple[list[Frame], int]] = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack_text, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [parse_frame(f) for f in stack_text.split(";") if f]
        stacks.append((frames, count))
    return stacks


def _is_thread_frame(frame: Frame) -> bool:
    return frame.func.startswith("thread (") or frame.func.startswith("process ")


def thread_kind(frames: list[Frame]) -> str:
    code = [f for f in frames if not _is_thread_frame(f)]
    files = " ".join(f.file for f in code[:6])
    funcs = {f.func for f in code[:6]}
    if "_bootstrap" in funcs or "threading.py" in files:
        if any("anyio" in f.file for f in code):
            return "worker thread (anyio to_thread: FastMCP sync tools)"
        if any("concurrent/futures" in f.file for f in code):
            return "worker thread (executor: sync_to_async)"
        return "other thread"
    return "event loop (main thread)"


# (name, predicate over a frame); a sample counts once per component if any frame matches.
def _f(func: str | None = None, file: str | None = None) -> Any:
    def match(fr: Frame) -> bool:
        # py-spy qualifies methods ("GovernedMCP.__call__"); module functions are bare
        name_ok = func is None or fr.func == func or fr.func.endswith("." + func)
        return name_ok and (file is None or file in fr.file)

    return match


COMPONENTS: list[tuple[str, list[Any]]] = [
    ("GovernedMCP._handle (whole governed request)", [_f("_handle", "mcpauth/edge/pipeline.py")]),
    ("  admit(): token → tenant → scopes → rate limit", [_f("admit", "mcpauth/admission/gate.py")]),
    ("    close_old_connections()", [_f("close_old_connections", "django/db/")]),
    (
        "    JWT verify (mcpauth.identity.tokens.verify)",
        [_f("verify", "mcpauth/identity/tokens.py")],
    ),
    (
        "    tenant resolve (mcpauth.identity.tenancy.resolve)",
        [_f("resolve", "mcpauth/identity/tenancy.py")],
    ),
    (
        "    scopes → permissions (permissions_for)",
        [_f("permissions_for", "mcpauth/identity/scopes.py")],
    ),
    ("    rate limit: hit (Redis INCR/ADD)", [_f("hit", "mcpauth/admission/ratelimit.py")]),
    ("  authorize()", [_f("authorize", "mcpauth/admission/gate.py")]),
    ("  parse_envelope() + _depth()", [_f("parse_envelope", "mcpauth/runtime/envelope.py")]),
    ("  outcome_from_response() (re-parse reply JSON)", [_f("outcome_from_response")]),
    ("  Transport.serve (SDK + FastMCP)", [_f("serve", "mcpauth/runtime/transport.py")]),
    (
        "    serve_single_exchange (handshake-era shortcut)",
        [_f("serve_single_exchange", "mcpauth/runtime/transport.py")],
    ),
    (
        "    SDK modern entry (handle_modern_request)",
        [_f("handle_modern_request", "mcp/server/_streamable_http_modern.py")],
    ),
    ("    serve_one (SDK handler kernel)", [_f("serve_one", "mcp/server/runner.py")]),
    ("    FastMCP call_tool (middleware + runner)", [_f("call_tool", "fastmcp/server/server.py")]),
    (
        "      GovernedBody._run_sync: body + result + audit row, one transaction",
        [_f("_run_sync", "mcpauth/runtime/runner.py")],
    ),
    ("        tool body (todos/services.py)", [_f(None, "todos/services.py")]),
    ("        Tool.convert_result (FastMCP serializer)", [_f("convert_result", "fastmcp/")]),
    ("        audit record() (INSERT)", [_f("record", "audit/recorder.py")]),
    ("        transaction.atomic __exit__ (COMMIT)", [_f("__exit__", "django/db/transaction.py")]),
    ("        transaction.atomic __enter__ (BEGIN)", [_f("__enter__", "django/db/transaction.py")]),
    ("sync_to_async (asgiref) frames on stack", [_f(None, "asgiref/sync.py")]),
    ("anyio to_thread frames on stack", [_f(None, "anyio/to_thread.py")]),
    ("pydantic frames on stack", [_f(None, "pydantic/"), _f(None, "pydantic_core/")]),
    ("json module frames on stack", [_f(None, "json/")]),
    ("psycopg frames on stack", [_f(None, "psycopg/")]),
    ("django.db frames on stack", [_f(None, "django/db/")]),
    ("redis-py / django cache frames on stack", [_f(None, "redis/"), _f(None, "core/cache/")]),
    ("PyJWT / cryptography frames on stack", [_f(None, "jwt/"), _f(None, "cryptography/")]),
    ("uvicorn / h11 frames on stack", [_f(None, "uvicorn/"), _f(None, "h11/")]),
    ("starlette frames on stack", [_f(None, "starlette/")]),
    ("logging frames on stack", [_f(None, "logging/")]),
]

# Innermost matching layer wins (checked in this order for each frame, leaf first).
BUCKETS: list[tuple[str, list[Any]]] = [
    ("JSON (json module)", [_f(None, "json/")]),
    ("psycopg (DB driver, incl. waits)", [_f(None, "psycopg/")]),
    ("Django ORM / db layer", [_f(None, "django/db/")]),
    ("Redis client / Django cache", [_f(None, "redis/"), _f(None, "django/core/cache/")]),
    ("django-ratelimit", [_f(None, "django_ratelimit/")]),
    ("JWT / crypto (PyJWT, cryptography)", [_f(None, "jwt/"), _f(None, "cryptography/")]),
    ("joserfc / authlib", [_f(None, "joserfc/"), _f(None, "authlib/")]),
    ("pydantic", [_f(None, "pydantic/"), _f(None, "pydantic_core/")]),
    ("audit app (recorder, redaction)", [_f(None, "audit/")]),
    ("todos app (services)", [_f(None, "todos/")]),
    ("mcpauth (governance)", [_f(None, "mcpauth/")]),
    ("FastMCP", [_f(None, "fastmcp/")]),
    ("MCP SDK", [_f(None, "/mcp/")]),
    ("starlette / sse", [_f(None, "starlette/"), _f(None, "sse_starlette/")]),
    ("uvicorn / h11 (HTTP server)", [_f(None, "uvicorn/"), _f(None, "h11/")]),
    ("asgiref (sync_to_async hop)", [_f(None, "asgiref/")]),
    ("anyio (to_thread hop, task groups)", [_f(None, "anyio/")]),
    ("Django (other)", [_f(None, "django/")]),
    ("logging", [_f(None, "logging/")]),
    (
        "threading / concurrent.futures / queue",
        [_f(None, "threading.py"), _f(None, "concurrent/futures/"), _f(None, "queue.py")],
    ),
    ("asyncio event loop", [_f(None, "asyncio/")]),
    (
        "uuid / contextvars / typing / dataclasses / other stdlib",
        [
            _f(None, "uuid.py"),
            _f(None, "typing.py"),
            _f(None, "dataclasses.py"),
            _f(None, "contextlib.py"),
            _f(None, "functools.py"),
            _f(None, "copy.py"),
            _f(None, "enum.py"),
            _f(None, "inspect.py"),
            _f(None, "abc.py"),
        ],
    ),
]


def _matches(frame: Frame, preds: list[Any]) -> bool:
    return any(p(frame) for p in preds)


def summarise(stacks: list[tuple[list[Frame], int]], top: int = 30) -> dict[str, Any]:
    total = sum(c for _, c in stacks) or 1
    self_time: Counter[str] = Counter()
    incl_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    components: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for frames, count in stacks:
        code = [f for f in frames if not _is_thread_frame(f)]
        if not code:
            continue
        threads[thread_kind(frames)] += count
        self_time[code[-1].label] += count
        for label in {f.label for f in code}:
            incl_time[label] += count
        for name, preds in COMPONENTS:
            if any(_matches(f, preds) for f in code):
                components[name] += count
        bucket = "other"
        for frame in reversed(code):
            hit = next((name for name, preds in BUCKETS if _matches(frame, preds)), None)
            if hit is not None:
                bucket = hit
                break
        buckets[bucket] += count

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1)

    return {
        "samples": total,
        "threads": [(k, v, pct(v)) for k, v in threads.most_common()],
        "components": [(name, components[name], pct(components[name])) for name, _ in COMPONENTS],
        "buckets": [(k, v, pct(v)) for k, v in buckets.most_common()],
        "top_self": [(k, v, pct(v)) for k, v in self_time.most_common(top)],
        "top_inclusive": [(k, v, pct(v)) for k, v in incl_time.most_common(top)],
    }


def render(summary: dict[str, Any], title: str = "") -> str:
    out: list[str] = []
    if title:
        out += [title, "=" * len(title)]
    out.append(f"samples: {summary['samples']}")

    def section(name: str, rows: list[tuple[str, int, float]], note: str = "") -> None:
        out.append("")
        out.append(f"## {name}" + (f"  ({note})" if note else ""))
        for label, n, p in rows:
            out.append(f"{p:6.1f}%  {n:7d}  {label}")

    section("threads", summary["threads"])
    section(
        "components", summary["components"], "inclusive: % of samples whose stack passes through"
    )
    section("layers", summary["buckets"], "exclusive: innermost known layer, sums to 100%")
    section("top frames by self time", summary["top_self"])
    section("top frames by inclusive time", summary["top_inclusive"])
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    stacks = parse(args.raw.read_text().splitlines())
    sys.stdout.write(render(summarise(stacks, args.top), str(args.raw)))


if __name__ == "__main__":
    main()
