"""In-process figures: per-operation timings and round trips per call."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from asgi_driver import call, lifespan, request_headers
from common import SCENARIOS, SEED_IDS
from protocol import ERAS, Era, looks_like_error, scenario_bodies, scenario_calls

# --- micro-figures --------------------------------------------------------------------------


def _timeit(fn: Callable[[], Any], n: int, warmup: int = 50) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return {
        "n": n,
        "median_us": round(samples[n // 2] / 1000, 2),
        "mean_us": round(sum(samples) / n / 1000, 2),
        "p99_us": round(samples[min(n - 1, int(n * 0.99))] / 1000, 2),
    }


def micro_figures(token: str, scale: float = 1.0) -> dict[str, Any]:
    import anyio
    from asgiref.sync import sync_to_async
    from django.db import close_old_connections, connection

    from audit.recorder import record
    from mcpauth.admission import ratelimit
    from mcpauth.conf import get_settings
    from mcpauth.identity.tokens import principal_for, verify
    from mcpauth.runtime.context import CallContext
    from mcpauth.runtime.envelope import parse_envelope
    from todos import services

    def n(base: int) -> int:
        return max(50, int(base * scale))

    out: dict[str, Any] = {}
    vt = verify(token)  # fetches the JWKS once; later calls use cached keys
    out["token_verify (mcpauth.identity.tokens.verify, cached keys)"] = _timeit(
        lambda: verify(token), n(3000)
    )

    principal = principal_for(vt)
    out["tenant + scopes (tenancy.resolve + scopes.permissions_for, cached)"] = _timeit(
        lambda: principal_for(vt), n(20000)
    )
    body = scenario_bodies("get_todo", ERAS["2026-07-28"])[0].encode()
    conf = get_settings()

    def envelope() -> None:
        parse_envelope(
            CallContext(request_id="x", client_ip="127.0.0.1", user_agent="b"), body, conf
        )

    out["parse_envelope (JSON-RPC body, 2026-07-28 envelope)"] = _timeit(envelope, n(20000))
    from mcpauth.admission import floods

    out["IP refusal budget: throttled? (in-process, refusals only)"] = _timeit(
        lambda: floods.throttled("127.0.0.1"), n(20000)
    )
    out["rate limit: hit (Redis, cache object reused)"] = _timeit(
        lambda: ratelimit.hit(principal), n(3000)
    )
    # Under uvicorn each request runs in a fresh copy of the server's context, and Django's
    # ``caches`` is context-local: a cache object first touched inside a request is not seen
    # by the next one. An empty context reproduces what each request then pays.
    out["rate limit: hit in a fresh context (new cache object, as per request)"] = _timeit(
        lambda: contextvars.Context().run(ratelimit.hit, principal), n(1000)
    )
    close_old_connections()
    connection.ensure_connection()

    def ping() -> None:
        connection.health_check_done = False
        connection.close_if_health_check_failed()

    out["DB health-check ping per request (close_old_connections → SELECT 1)"] = _timeit(
        ping, n(3000)
    )
    todo_id = SEED_IDS[0]
    out["service get_todo (1 SELECT)"] = _timeit(
        lambda: services.get_todo(principal, todo_id), n(3000)
    )

    out.update(isolation_figures(principal, todo_id, n))

    def audit_write() -> None:
        record(
            outcome="ok",
            status=200,
            request_id=uuid.uuid4().hex,
            method="tools/call",
            tool="get_todo",
            principal=principal,
            duration_ms=1.234,
            client_ip="127.0.0.1",
            user_agent="bench-micro",
            arguments={"todo_id": todo_id},
        )

    out["audit write (audit.recorder.record, autocommit INSERT)"] = _timeit(audit_write, n(3000))

    with connection.cursor() as cur:
        cur.execute("SET synchronous_commit TO off")
    out["audit write with synchronous_commit=off (comparison only: not durable)"] = _timeit(
        audit_write, n(3000)
    )
    with connection.cursor() as cur:
        cur.execute("SET synchronous_commit TO on")

    from django.db import transaction

    def get_with_audit() -> None:
        with transaction.atomic():
            services.get_todo(principal, todo_id)
            audit_write()

    out["get_todo + audit row in one transaction (BEGIN, SELECT, INSERT, COMMIT)"] = _timeit(
        get_with_audit, n(3000)
    )

    def noop() -> None:
        return None

    async def hops(kind: str, count: int) -> list[int]:
        fn = (
            sync_to_async(noop, thread_sensitive=False)
            if kind == "asgiref"
            else (lambda: anyio.to_thread.run_sync(noop))
        )
        for _ in range(50):
            await fn()
        samples = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            await fn()
            samples.append(time.perf_counter_ns() - t0)
        return samples

    out.update(asyncio.run(transport_figures(n)))

    for kind, label in (
        ("asgiref", "thread hop: sync_to_async(thread_sensitive=False), no-op"),
        ("anyio", "thread hop: anyio.to_thread.run_sync, no-op"),
    ):
        samples = sorted(asyncio.run(hops(kind, n(5000))))
        k = len(samples)
        out[label] = {
            "n": k,
            "median_us": round(samples[k // 2] / 1000, 2),
            "mean_us": round(sum(samples) / k / 1000, 2),
            "p99_us": round(samples[int(k * 0.99)] / 1000, 2),
        }
    return out


async def transport_figures(n: Callable[[int], int]) -> dict[str, Any]:
    """What a governed call pays for notifications and cancellation when it uses neither:
    the reply through ``mcpauth.runtime.streaming.ReplyStream`` (one JSON body) and the watcher task
    ``mcpauth.runtime.cancellation.watching`` keeps beside the call (waiting for a disconnect)."""
    from mcpauth.runtime.cancellation import watching
    from mcpauth.runtime.context import CallContext
    from mcpauth.runtime.streaming import ReplyStream

    async def send(message: dict[str, Any]) -> None:
        return None

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    body = b'{"jsonrpc":"2.0","id":1,"result":{}}'

    async def reply() -> None:
        await ReplyStream(send, sse=True).reply(body, 200)

    async def watched() -> None:
        call = CallContext(request_id="x", client_ip="127.0.0.1", user_agent="b")
        stream = ReplyStream(send, sse=True)
        async with watching(call, receive, stream, handshake_era=False):
            await asyncio.sleep(0)  # the call's body yields at least once
        await asyncio.sleep(0)  # let the cancelled watcher finish

    async def bare() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    out: dict[str, Any] = {}
    for label, fn, count in (
        ("reply: one JSON body through ReplyStream (SSE accepted, nothing notified)", reply, 20000),
        ("call body yielding twice, no watcher (comparison)", bare, 20000),
        ("call body yielding twice, inside the cancellation watcher", watched, 20000),
    ):
        for _ in range(200):
            await fn()
        samples = []
        for _ in range(n(count)):
            t0 = time.perf_counter_ns()
            await fn()
            samples.append(time.perf_counter_ns() - t0)
        samples.sort()
        k = len(samples)
        out[label] = {
            "n": k,
            "median_us": round(samples[k // 2] / 1000, 2),
            "mean_us": round(sum(samples) / k / 1000, 2),
            "p99_us": round(samples[int(k * 0.99)] / 1000, 2),
        }
    return out


def isolation_figures(principal: Any, todo_id: str, n: Callable[[int], int]) -> dict[str, Any]:
    """What tenant isolation adds to a governed call (issue 16's budget: 50 µs).

    A governed body binds the tenant (a context variable), ``rls.ensure()`` checks the
    connection (no query when it already serves that tenant), and every statement passes the
    execute wrapper and PostgreSQL's policy. Switching the connection to another tenant costs
    one ``set_config`` round trip; a worker thread that serves one tenant after another pays it
    once per change.
    """
    from django.db import connection

    from mcpauth import rls
    from mcpauth.models import Tenant
    from mcpauth.tenant_scope import confined
    from todos import services

    tenant_id = principal.tenant.id
    other = Tenant.objects.get_or_create(external_id="bench-other-tenant")[0].pk
    out: dict[str, Any] = {}

    def governed_get() -> None:
        with confined(tenant_id):
            rls.ensure()
            services.get_todo(principal, todo_id)

    def bind_and_ensure() -> None:
        with confined(tenant_id):
            rls.ensure()

    def switch() -> None:
        for tenant in (other, tenant_id):
            with confined(tenant):
                rls.ensure()

    rls.ensure()
    out["isolation: service get_todo outside a body (login role, no policy)"] = _timeit(
        lambda: services.get_todo(principal, todo_id), n(3000)
    )
    with confined(tenant_id):
        rls.ensure()
    out["isolation: service get_todo in a governed body, same tenant (no switch)"] = _timeit(
        governed_get, n(3000)
    )
    out["isolation: bind tenant + ensure(), connection already switched"] = _timeit(
        bind_and_ensure, n(20000)
    )
    out["isolation: switch to another tenant and back (2 set_config round trips)"] = _timeit(
        switch, n(2000)
    )
    with connection.cursor() as cursor:  # back to the login role for what follows
        cursor.execute("SELECT 1")
    return out


# --- round trips per call, in process ------------------------------------------------------


def round_trips(token: str, eras: list[Era], calls: int = 40) -> dict[str, Any]:
    """Drive ``config.asgi.application`` in this process and count, per call: SQL statements,
    transactions (commits + rollbacks), Redis commands and thread hops, plus the in-process
    latency (no HTTP server, no socket). Counting wraps psycopg's ``Cursor.execute`` (so the
    health-check ``SELECT 1`` counts), ``Connection.commit``/``rollback``, redis-py's
    ``Redis.execute_command``, asgiref's ``SyncToAsync.__call__`` and ``anyio.to_thread.run_sync``,
    in this process only and only while measuring."""
    import anyio.to_thread
    import psycopg
    import redis.client
    from asgiref.sync import SyncToAsync

    from config.asgi import application

    counts = {"sql": 0, "commit": 0, "rollback": 0, "redis": 0, "sync_to_async": 0, "to_thread": 0}
    lock = threading.Lock()
    statements: dict[str, int] = {}

    def bump(key: str) -> None:
        with lock:
            counts[key] += 1

    originals: list[tuple[Any, str, Any]] = []

    def wrap_sync(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def wrapper(*a: Any, **kw: Any) -> Any:
            bump(key)
            return original(*a, **kw)

        setattr(owner, name, wrapper)

    def wrap_async(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        async def wrapper(*a: Any, **kw: Any) -> Any:
            bump(key)
            return await original(*a, **kw)

        setattr(owner, name, wrapper)

    async def run_all() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with lifespan(application):
            for era in eras:
                per_era: dict[str, Any] = out.setdefault(era.name, {})
                # every scenario as clients send it (Accept: JSON and SSE), and get_todo once
                # more from a JSON-only client: the reply is one JSON body either way, so the
                # two must cost the same (a call that notifies nothing streams nothing)
                variants = [(scenario, scenario, None) for scenario in SCENARIOS]
                variants.append(("get_todo json-only", "get_todo", "application/json"))
                for label, scenario, accept in variants:
                    headers = request_headers(token, era, scenario_calls(scenario)[0])
                    if accept is not None:
                        headers = [
                            (k, accept.encode() if k == b"accept" else v) for k, v in headers
                        ]
                    bodies = [b.encode() for b in scenario_bodies(scenario, era)]
                    for i in range(5):  # warm: thread pools, connections, caches
                        await call(application, bodies[i % len(bodies)], headers)
                    for key in counts:
                        counts[key] = 0
                    statements.clear()
                    t0 = time.perf_counter()
                    statuses = []
                    for i in range(calls):
                        status, raw = await call(application, bodies[i % len(bodies)], headers)
                        statuses.append(status == 200 and not looks_like_error(raw.decode()))
                    wall = time.perf_counter() - t0
                    per_era[label] = {
                        "calls": calls,
                        "ok": all(statuses),
                        "in_process_ms_per_call": round(wall * 1000 / calls, 3),
                        **{f"{k}_per_call": round(v / calls, 2) for k, v in counts.items()},
                        "statements_per_call": {
                            k: round(v / calls, 2)
                            for k, v in sorted(statements.items(), key=lambda kv: -kv[1])
                        },
                    }
        return out

    original_execute = psycopg.Cursor.execute
    originals.append((psycopg.Cursor, "execute", original_execute))

    def execute(self: Any, query: Any, *a: Any, **kw: Any) -> Any:
        text = query if isinstance(query, str | bytes) else repr(query)
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        with lock:
            counts["sql"] += 1
            statements[" ".join(text.split())[:90]] = (
                statements.get(" ".join(text.split())[:90], 0) + 1
            )
        return original_execute(self, query, *a, **kw)

    psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    wrap_sync(psycopg.Connection, "commit", "commit")
    wrap_sync(psycopg.Connection, "rollback", "rollback")
    original_command = redis.client.Redis.execute_command
    originals.append((redis.client.Redis, "execute_command", original_command))

    def execute_command(self: Any, *args: Any, **kw: Any) -> Any:
        with lock:
            counts["redis"] += 1
            name = f"redis {args[0] if args else '?'}"
            statements[name] = statements.get(name, 0) + 1
        return original_command(self, *args, **kw)

    redis.client.Redis.execute_command = execute_command  # type: ignore[method-assign]
    wrap_async(SyncToAsync, "__call__", "sync_to_async")
    wrap_async(anyio.to_thread, "run_sync", "to_thread")
    try:
        return asyncio.run(run_all())
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)
