"""Where the governance tax goes: ours, ours without each round trip, and fair, in one process.

``make bench``'s load runs give the tax (ours - fair, server CPU per call) and its instruction
counts; this answers *what in ours* costs it. One process serves ours
(``config.asgi.application``) and fair (``bench/fair_server.py``) through their ASGI apps (no
socket, no uvicorn), and drives blocks of calls through five variants in turn, round after
round, so that drift on a busy machine hits every variant alike:

* ``ours``: as served;
* ``ours, every call counted``: no count leased (``MCPAUTH_RATE_LIMIT_LEASE = 1``): one Redis
  round trip per call, as before ``mcpauth.admission.leases``;
* ``ours, COMMIT on its own``: a write call's audit row and its transaction's ``COMMIT`` in two
  round trips, as before ``audit.recorder``'s ``commit=True``;
* ``ours, count not sent``: the Redis rate-limit count answers at once (``RedisCache.acount``
  returns 1 without a round trip); every other step as served;
* ``ours, row not sent``: the audit row is built, redacted and scrubbed as always, but its
  ``INSERT`` is not sent (``audit.recorder._insert`` returns at once);
* ``ours, neither sent``: both;
* ``fair``: plain FastMCP over the same services (with FastMCP's telemetry as a plain FastMCP
  process has it, ``native``).

The figure is the process's CPU time (user + system, ``getrusage``) per call, median of the
rounds, and the involuntary context switches per call: a round trip to another process
(PostgreSQL, Redis) wakes it, often on our core. The two variants that skip a round trip are
diagnostics only, never a configuration: a call's count and its row are what governance is.

Run: ``.venv/bin/python bench/attribution.py`` (PostgreSQL and Redis as for ``make bench``; it
creates and drops ``BENCH_DB_NAME``, default ``mcp_bench``; ~2 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PY, RESULTS, ROOT, log
from fixtures import (
    Issuer,
    django_env,
    drop_database,
    flush_redis,
    recreate_database,
    seed_todos,
    setup_django,
)

VARIANTS = (
    "ours",
    "ours, every call counted",
    "ours, COMMIT on its own",
    "ours, count not sent",
    "ours, row not sent",
    "ours, neither sent",
    "fair",
)


@contextlib.contextmanager
def _patched(variant: str) -> Iterator[None]:
    """The variant's stand-ins (see the module docstring), undone on exit."""
    import fastmcp

    import audit.recorder
    from mcpauth.admission.cache import RedisCache
    from mcpauth.admission.leases import Leases

    async def acount(
        self: Any, key: str, ttl: int, most: int = 1, limit: int = 0
    ) -> tuple[int, int]:
        return most, most  # a counter far from its limit grants what was asked

    def one_at_a_time(self: Any, key: str, limit: int, cap: int, loop: Any = None) -> int:
        return 1

    def insert(commit: bool, **values: Any) -> int:
        return 0

    saved: list[tuple[Any, str, Any]] = []

    def put(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, inspect.getattr_static(owner, name)))
        setattr(owner, name, value)

    if variant == "ours, every call counted":
        put(Leases, "size", one_at_a_time)
    if variant == "ours, COMMIT on its own":
        put(audit.recorder, "_ends_transaction", lambda connection: False)
    if variant in ("ours, count not sent", "ours, neither sent"):
        put(RedisCache, "acount", acount)
    if variant in ("ours, row not sent", "ours, neither sent"):
        put(audit.recorder, "_insert", insert)
    if variant == "fair":
        put(fastmcp.settings, "telemetry_mode", "native")
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def measure(rounds: int, calls: int, scenarios: list[str], eras: list[str]) -> dict[str, Any]:
    """CPU ms and involuntary context switches per call, per era, scenario and variant."""
    import fair_server
    import uvloop
    from asgi_driver import call, lifespan, request_headers
    from protocol import ERAS, looks_like_error, scenario_bodies, scenario_calls

    from config.asgi import application as ours

    token = os.environ["BENCH_TOKEN"]
    out: dict[str, Any] = {}

    async def block(app: Any, bodies: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
        for i in range(calls):
            status, raw = await call(app, bodies[i % len(bodies)], headers)
            if status != 200:  # a variant that fails costs less and would read as a saving
                raise RuntimeError(f"HTTP {status}: {raw[:200]!r}")

    async def run() -> None:
        async with lifespan(ours), lifespan(fair_server.app):
            for scenario in scenarios:
                for era_name in eras:
                    era = ERAS[era_name]
                    headers = request_headers(token, era, scenario_calls(scenario)[0])
                    bodies = [b.encode() for b in scenario_bodies(scenario, era)]
                    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
                    for variant in VARIANTS:  # warm, and check every variant answers
                        app = fair_server.app if variant == "fair" else ours
                        with _patched(variant):
                            for i in range(5):
                                status, raw = await call(app, bodies[i % len(bodies)], headers)
                                if status != 200 or looks_like_error(raw.decode()):
                                    raise RuntimeError(f"{variant} {scenario}: {raw[:200]!r}")
                    for _ in range(rounds):
                        for variant in VARIANTS:
                            app = fair_server.app if variant == "fair" else ours
                            with _patched(variant):
                                before = resource.getrusage(resource.RUSAGE_SELF)
                                await block(app, bodies, headers)
                                after = resource.getrusage(resource.RUSAGE_SELF)
                            cpu = (after.ru_utime - before.ru_utime) + (
                                after.ru_stime - before.ru_stime
                            )
                            switches = after.ru_nivcsw - before.ru_nivcsw
                            samples[variant].append((cpu * 1000 / calls, switches / calls))
                    fair_cpu = statistics.median(s[0] for s in samples["fair"])
                    rows = {}
                    for variant, values in samples.items():
                        cpu = statistics.median(s[0] for s in values)
                        rows[variant] = {
                            "cpu_ms_per_call": round(cpu, 3),
                            "over_fair_ms": round(cpu - fair_cpu, 3),
                            "involuntary_switches_per_call": round(
                                statistics.median(s[1] for s in values), 2
                            ),
                        }
                        log(
                            f"{era_name:10s} {scenario:12s} {variant:22s} cpu {cpu:6.3f} ms/call "
                            f"(fair {cpu - fair_cpu:+.3f})  involuntary switches "
                            f"{rows[variant]['involuntary_switches_per_call']:.2f}/call"
                        )
                    out.setdefault(era_name, {})[scenario] = rows

    uvloop.run(run())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="Where the governance tax goes (module docstring).")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=100, help="calls per block")
    p.add_argument("--scenarios", default="get_todo,create_todo")
    p.add_argument("--eras", default="2026-07-28,handshake")
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args()
    issuer = Issuer()
    try:
        env = django_env(issuer, 8000, "100000000/m")
        recreate_database()
        flush_redis()
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput"],
            env={**os.environ, **env},
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        setup_django(env)
        tenant_pk = seed_todos()
        audience = f"{env['BASE_URL']}/mcp"
        os.environ.update(
            BENCH_TOKEN=issuer.mint(audience),
            BENCH_JWKS_URL=issuer.jwks_url,
            BENCH_ISSUER=issuer.url,
            BENCH_AUDIENCE=audience,
            BENCH_BASE_URL=env["BASE_URL"],
            BENCH_TENANT_PK=str(tenant_pk),
        )
        result = measure(args.rounds, args.calls, args.scenarios.split(","), args.eras.split(","))
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / "attribution.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        log(f"results: {path}")
    finally:
        issuer.close()
        if not args.keep_db:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
            drop_database()


if __name__ == "__main__":
    main()
