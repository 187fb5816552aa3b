"""``make bench``: load-test the governed MCP server against the seed quickstart, plain FastMCP
doing the same database work (the governance tax) and a floor.

One command (see bench/README.md for how to read the output):

1. installs ``wrk`` with apt-get when missing (and ``py-spy`` into the venv for the profile);
2. creates the PostgreSQL database ``mcp_bench``, migrates it, seeds the bench tenant's todos,
   flushes Redis db 11, serves the bench RSA key's JWKS on loopback from a thread;
3. starts five servers under uvicorn on loopback ports, for 1 and then 2 workers:
   **baseline** (``bench/baseline_server.py``, the quickstart on FastMCP's ``JWTVerifier`` and a
   dict), **fair** (``bench/fair_server.py``, plain FastMCP over the same todo services and
   database as ours, no governance), **dms** (``bench/dms_project``, django-mcp-server over the
   same table, in its own venv ``bench/.venv-dms``, ``bench/dms.py``; handshake era only),
   **ours** (``config.asgi:application``, full stack: PostgreSQL, Redis, audit rows) and
   **floor** (``bench/floor_app.py``, parse JSON and answer a fixed result);
4. drives ``tools/call`` load with ``wrk`` + ``bench/mcp.lua`` for each scenario and protocol era
   (handshake-era requests and 2026-07-28 envelopes, ``bench/protocol.py``), interleaving the
   servers (floor, baseline, fair, ours / ours, fair, baseline ...) over several repetitions,
   and reports medians, ratios and the governance tax (ours - fair, ``bench/summary.py``) per
   era;
4b. counts instructions per call of ours and fair under valgrind's cachegrind, in process
   (``bench/instructions.py``);
5. measures per-call micro-figures in-process (token verification, tenant + scope resolution,
   rate-limit round trips, audit insert, thread hops);
6. profiles ours under ``get_todo`` load with py-spy (1 worker, 2026-07-28 by default);
7. audit at scale: 1,000,000 ``AuditEvent`` rows by COPY, then the admin changelist (default
   page, each filter, searches, date drill-down), the overview before and after sealing,
   ``audit_seal`` and ``audit_verify`` (rows/s), ``audit_export`` (time, peak RSS) and
   ``audit_prune`` of half of them;
8. prints a table and writes ``bench/results/<timestamp>.json`` and ``bench/results/latest.json``.

Every child process is started in its own process group and ended (TERM, then KILL) on exit,
on error and on SIGINT/SIGTERM.

Modules, by concern: ``common`` (paths, constants, child processes, server launch),
``fixtures`` (issuer, database, Redis, seed data), ``machine`` (machine facts, CPU accounting),
``protocol`` (request bodies and headers per era), ``load`` (wrk runs, stack check),
``profile_load`` (py-spy under load), ``dms`` (django-mcp-server's venv and environment),
``summary`` (load medians, ratios, tax), ``instructions`` (cachegrind counts), ``asgi_driver``
(in-process ASGI calls), ``micro`` (in-process figures), ``auditscale`` (1M audit rows),
``report`` (table, JSON), ``profsum`` (py-spy summaries); this file parses arguments and runs
the phases.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from auditscale import (
    drop_seal_key,
    seal_key,
    seed_audit_rows,
    time_admin,
    time_export,
    time_overview,
    time_prune,
    time_seal,
)
from common import (
    CHILDREN,
    CLIENT_ID,
    LAUNCH,
    ORIG_ENV,
    PY,
    RESULTS,
    SCENARIOS,
    SEED_TODOS,
    SERVERS,
    TENANT,
    Server,
    ensure_py_spy,
    ensure_wrk,
    free_port,
    log,
    run_checked,
)
from dms import DMS_ERAS, ensure_venv, reported_pins
from fixtures import (
    Issuer,
    django_env,
    drop_database,
    flush_redis,
    recreate_database,
    seed_todos,
    setup_django,
)
from instructions import instruction_counts
from load import run_load, server_envs, stack_check
from machine import machine_facts
from micro import micro_figures, round_trips
from profile_load import profile_ours
from protocol import ERAS
from report import print_table, write_results

# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark the governed MCP server (make bench).")
    p.add_argument(
        "--quick",
        action="store_true",
        help="get_todo + create_todo, 1 worker, 8 connections, 2 reps of 2 s; "
        "no profile and no audit-at-scale unless asked",
    )
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 3; quick 2)")
    p.add_argument("--reps", type=int, help="repetitions per scenario (default 3; quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per server+scenario (default 1)")
    p.add_argument("--pause", type=float, default=0.3, help="pause between runs, seconds")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--workers", help="comma-separated uvicorn worker counts (default 1,2)")
    p.add_argument("--connections", help="comma-separated wrk connection counts (default 8,32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="no per-response error check in wrk's Lua (faster, errors undetected)",
    )
    p.add_argument("--no-load", action="store_true", help="skip the load runs")
    p.add_argument(
        "--dms",
        dest="dms",
        action="store_true",
        default=None,
        help="load django-mcp-server too (its own venv bench/.venv-dms, created on demand; "
        "handshake era only); default on, off with --quick",
    )
    p.add_argument("--no-dms", dest="dms", action="store_false")
    p.add_argument("--no-micro", action="store_true", help="skip the micro-figures")
    p.add_argument(
        "--profile",
        dest="profile",
        action="store_true",
        default=None,
        help="profile ours with py-spy (default on, off with --quick)",
    )
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--profile-duration", type=int, default=10)
    p.add_argument("--profile-connections", type=int, default=8)
    p.add_argument(
        "--profile-era", default="2026-07-28", choices=sorted(ERAS), help="era of the profiled load"
    )
    p.add_argument("--no-profile-svg", dest="profile_svg", action="store_false", default=True)
    p.add_argument(
        "--audit-scale",
        dest="audit_scale",
        action="store_true",
        default=None,
        help="seed 1,000,000 audit rows and time admin/export/prune (default on, off with --quick)",
    )
    p.add_argument("--no-audit-scale", dest="audit_scale", action="store_false")
    p.add_argument("--audit-rows", type=int, default=1_000_000)
    p.add_argument(
        "--export-formats", default="csv", help="audit_export formats to time (csv,jsonl)"
    )
    p.add_argument("--rate", default="100000000/m", help="MCPAUTH_RATE_LIMIT for ours")
    p.add_argument(
        "--plain-uvicorn",
        action="store_true",
        help="launch with the uvicorn CLI instead of bench/serve.py (multi-worker runs then "
        "have Nagle on: see bench/serve.py)",
    )
    p.add_argument("--loop", default="auto", help="uvicorn --loop for every server")
    p.add_argument("--http", default="auto", help="uvicorn --http for every server")
    p.add_argument(
        "--eras",
        default=",".join(ERAS),
        help="comma-separated protocol eras to load: handshake (2025-11-25 after initialize, "
        "as the mcp SDK) and 2026-07-28 (headers + _meta envelope, as fastmcp.Client); "
        "default both",
    )
    p.add_argument(
        "--no-stack-check",
        action="store_true",
        help="skip the floor run under plain `uvicorn --workers 2` (the Nagle check)",
    )
    p.add_argument("--keep-db", action="store_true", help="leave the mcp_bench database")
    p.add_argument(
        "--no-instructions",
        dest="instructions",
        action="store_false",
        default=True,
        help="skip the instruction counts (ours and fair under valgrind's cachegrind)",
    )
    p.add_argument(
        "--instructions-only",
        action="store_true",
        help="only the instruction counts: no stack check, load, micro, profile or audit scale",
    )
    p.add_argument(
        "--instr-calls",
        help="N1,N2: calls in the two counted children per era and scenario "
        "(instructions/call = (I(N2) - I(N1)) / (N2 - N1); default 10,40; quick 5,20)",
    )
    p.add_argument(
        "--instr-warmup",
        type=int,
        help="warm-up calls before the counted ones (default 10; quick 5)",
    )
    args = p.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (2.0 if q else 3.0)
    args.reps = args.reps or (2 if q else 3)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    default_scen = "get_todo,create_todo" if q else ",".join(SCENARIOS)
    args.scenarios = [s for s in (args.scenarios or default_scen).split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    args.eras = [e for e in args.eras.split(",") if e]
    for e in args.eras:
        if e not in ERAS:
            p.error(f"unknown era {e!r}: use {', '.join(ERAS)}")
    args.workers = [int(w) for w in (args.workers or ("1" if q else "1,2")).split(",")]
    args.connections = [int(c) for c in (args.connections or ("8" if q else "8,32")).split(",")]
    if args.profile is None:
        args.profile = not q
    args.export_formats = [f for f in args.export_formats.split(",") if f]
    if args.audit_scale is None:
        args.audit_scale = not q
    if args.dms is None:
        args.dms = not q
    if args.instructions_only:
        if not args.instructions:
            p.error("--instructions-only and --no-instructions contradict each other")
        args.no_load = args.no_micro = args.no_stack_check = True
        args.profile = args.audit_scale = False
    calls = [int(n) for n in (args.instr_calls or ("5,20" if q else "10,40")).split(",")]
    if len(calls) != 2 or not 0 <= calls[0] < calls[1]:
        p.error("--instr-calls takes N1,N2 with 0 <= N1 < N2")
    args.instr_calls = (calls[0], calls[1])
    if args.instr_warmup is None:
        args.instr_warmup = 5 if q else 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    LAUNCH.update(plain=args.plain_uvicorn, loop=args.loop, http=args.http)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # one bench at a time: runs share the mcp_bench database and Redis db 11
    lock = open(RESULTS / ".lock", "a+")  # held until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "?"
        print(f"another bench run is in progress (pid {owner})", file=sys.stderr)
        return 2
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    started = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {
        "meta": {"started": started.strftime("%Y-%m-%dT%H-%M-%SZ"), "status": "running"},
        "config": {k: v for k, v in vars(args).items()},
        "phases_s": {},
    }
    issuer: Issuer | None = None
    django_ready = False
    exit_code = 0
    t_all = time.perf_counter()

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        log(f"== {name}")
        try:
            yield
        finally:
            result["phases_s"][name] = round(time.perf_counter() - t0, 1)

    try:
        with phase("tools"):
            wrk = ensure_wrk()
            py_spy = ensure_py_spy() if args.profile else ""
            result["machine"] = machine_facts(wrk)
        m = result["machine"]
        log(
            f"{m['cores']} cores, {m['cpu_model']}; Python {m['python']}, Django "
            f"{m['versions']['django']}, FastMCP {m['versions']['fastmcp']}, uvicorn "
            f"{m['versions']['uvicorn']} ({m['uvicorn_loop']}/{m['uvicorn_http']}); "
            f"fdatasync {m['fdatasync']['median_ms']} ms; load average {m['loadavg_at_start']}"
        )
        ports = {name: free_port() for name in SERVERS}
        issuer = Issuer()
        env = django_env(issuer, ports["ours"], args.rate)
        envs: dict[str, dict[str, str]] = {}
        token = issuer.mint(f"{env['BASE_URL']}/mcp")
        result["config"]["token_claims"] = {
            "client_id": CLIENT_ID,
            "org_id": TENANT,
            "scope": "todo:read todo:write",
            "alg": "RS256",
        }
        with phase("database"):
            recreate_database()
            flush_redis()
            run_checked(
                [PY, "manage.py", "migrate", "--noinput"], env={**ORIG_ENV, **env}, timeout=300
            )
            setup_django(env)
            django_ready = True
            result["seed"] = {"tenant_pk": seed_todos(), "todos": SEED_TODOS}
            envs = server_envs(issuer, env, ports, result["seed"]["tenant_pk"])
        if not args.no_stack_check and not args.no_load:
            with phase("stack_check"):
                result["stack_check"] = stack_check(args, wrk, token)
        if not args.no_micro:
            with phase("micro"):
                result["micro"] = micro_figures(token, scale=0.3 if args.quick else 1.0)
                result["round_trips"] = round_trips(token, [ERAS[e] for e in args.eras])
        dms_python = None
        if args.dms and not args.no_load:
            with phase("dms_venv"):
                dms_python = ensure_venv()
                result["dms"] = {"python": dms_python, "pins": reported_pins(), "eras": DMS_ERAS}
        if not args.no_load:
            hook = None
            if args.profile:

                def hook(servers: dict[str, Server]) -> None:
                    with phase("profile"):
                        profile_ours(args, wrk, py_spy, servers["ours"], token, result)

            with phase("load"):
                run_load(args, wrk, envs, ports, token, result, hook, dms_python)
        if args.instructions:
            with phase("instructions"):
                result["instructions"] = instruction_counts(
                    envs,
                    token,
                    args.eras,
                    args.scenarios,
                    warmup=args.instr_warmup,
                    calls=args.instr_calls,
                )
        if args.audit_scale:
            with phase("audit_scale"):
                audit: dict[str, Any] = {}
                result["audit_scale"] = audit
                log(f"seeding {args.audit_rows} audit rows with COPY")
                audit["seed"] = seed_audit_rows(args.audit_rows)
                log(f"seeded in {audit['seed']['copy_s']} s; timing the admin")
                audit["admin"] = time_admin(audit["seed"]["known"])
                log("timing the overview before sealing (every figure from the table)")
                audit["overview"] = time_overview("unsealed")
                sealed_env = seal_key({**ORIG_ENV, **env})
                try:
                    log("timing audit_seal and audit_verify over every row")
                    audit["sealing"] = time_seal(sealed_env)
                    log("timing the overview after sealing (whole days from the rollup)")
                    audit["overview"] += time_overview("sealed")
                    log("timing audit_export")
                    audit["export"] = time_export(sealed_env, args.export_formats)
                    log("timing audit_prune")
                    audit["prune"] = time_prune(sealed_env, args.audit_rows)
                finally:
                    drop_seal_key()
        result["meta"]["status"] = "ok"
    except SystemExit as exc:
        result["meta"]["status"] = f"interrupted ({exc.code})"
        exit_code = int(exc.code) if isinstance(exc.code, int) else 1
    except Exception as exc:
        result["meta"]["status"] = "failed"
        result["meta"]["error"] = "".join(traceback.format_exception(exc))[-6000:]
        traceback.print_exc()
        exit_code = 1
    finally:
        CHILDREN.stop_all()
        result["meta"]["total_s"] = round(time.perf_counter() - t_all, 1)
        if django_ready:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
        if issuer is not None:
            result.setdefault("machine", {})["jwks_fetches"] = issuer.fetches
            issuer.close()
        with contextlib.suppress(Exception):
            flush_redis()
        if not args.keep_db:
            with contextlib.suppress(Exception):
                drop_database()
        for stale in RESULTS.glob(".server-*.log"):
            if result["meta"]["status"] == "ok":
                with contextlib.suppress(OSError):
                    stale.unlink()
        if "machine" in result or "load" in result:
            print_table(result)
            path = write_results(result)
            log(
                f"results: {path} (and {RESULTS / 'latest.json'}); "
                f"status {result['meta']['status']}, {result['meta']['total_s']} s"
            )
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
