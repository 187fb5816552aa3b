"""wrk load runs: the servers' environments, one run, a whole load phase (its summary is
``bench/summary.py``), the fair and dms servers' database check and the stack check (the
profile is ``bench/profile_load.py``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

from common import (
    BENCH,
    CHILDREN,
    LAUNCH,
    LUA,
    ORIG_ENV,
    PY,
    SEED_IDS,
    SEED_TODOS,
    Server,
    free_port,
    log,
    uvicorn_cmd,
)
from dms import DMS_APP, DMS_ERAS, dms_env
from fixtures import Issuer, analyze_tables, audit_count, connection_counters, todo_count
from machine import _children_cpu, cpu_delta, cpu_snapshot, listening_sockets, tree_rss_mib
from protocol import ERAS, Era, looks_like_error, post, scenario_bodies, scenario_calls, validate
from summary import summarise_load

# --- wrk ------------------------------------------------------------------------------------


def run_wrk(
    wrk: str,
    url: str,
    token: str,
    scenario: str,
    era: Era,
    *,
    connections: int,
    threads: int,
    duration: float,
    check: bool = True,
) -> dict[str, Any]:
    env = {
        **ORIG_ENV,
        "BENCH_TOKEN": token,
        "BENCH_BODIES": "\n".join(scenario_bodies(scenario, era)),
        "BENCH_HEADERS": "\n".join(
            f"{k}: {v}" for k, v in era.headers(scenario_calls(scenario)[0]).items()
        ),
        "BENCH_CHECK": "1" if check else "0",
    }
    cmd = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    proc = CHILDREN.popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        CHILDREN.stop(proc)
        raise RuntimeError("wrk did not finish") from None
    CHILDREN.stop(proc)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out[-2000:]}")
    data = json.loads(line[len("BENCH_JSON ") :])
    secs = data["duration_us"] / 1e6
    sock = data["socket_errors"]
    errors = (
        data["bad_status"]
        + data["rpc_errors"]
        + sock["connect"]
        + sock["read"]
        + sock["write"]
        + sock["timeout"]
    )
    lat = data["latency_us"]
    return {
        "requests": data["requests"],
        "seconds": round(secs, 3),
        "rps": round(data["requests"] / secs, 1) if secs else 0.0,
        "p50_ms": round(lat["p50"] / 1000, 3),
        "p90_ms": round(lat["p90"] / 1000, 3),
        "p99_ms": round(lat["p99"] / 1000, 3),
        "p999_ms": round(lat["p999"] / 1000, 3),
        "max_ms": round(lat["max"] / 1000, 3),
        "mean_ms": round(lat["mean"] / 1000, 3),
        "errors": errors,
        "bad_status": data["bad_status"],
        "rpc_errors": data["rpc_errors"],
        "socket_errors": sock,
        "first_error": data.get("first_error", ""),
    }


def server_envs(
    issuer: Issuer, env: dict[str, str], ports: dict[str, int], tenant_pk: int
) -> dict[str, dict[str, str]]:
    """Each server's environment: ours gets the Django one, baseline the quickstart's, fair
    both (the same Django settings and database as ours, FastMCP's verifier as baseline), dms
    the quickstart's issuer and the bench database (its own Django settings)."""
    base_env = {**ORIG_ENV, "PYTHONUNBUFFERED": "1"}

    def quickstart(name: str) -> dict[str, str]:
        return {
            "BENCH_JWKS_URL": issuer.jwks_url,
            "BENCH_ISSUER": issuer.url,
            "BENCH_AUDIENCE": f"{env['BASE_URL']}/mcp",
            "BENCH_BASE_URL": f"http://127.0.0.1:{ports[name]}",
        }

    return {
        "baseline": {**base_env, **quickstart("baseline"), "BENCH_SEED_TODOS": str(SEED_TODOS)},
        "fair": {**base_env, **env, **quickstart("fair"), "BENCH_TENANT_PK": str(tenant_pk)},
        "dms": dms_env(base_env, quickstart("dms"), tenant_pk),
        "ours": {**base_env, **env},
        "floor": base_env,
    }


def db_check(name: str, url: str, token: str, era: Era, tenant_pk: int) -> dict[str, Any]:
    """A server (fair, dms) really reads the seeded todos and really inserts one row in the
    bench tenant (rows before/after)."""
    status, _, raw = post(
        url, era.body("get_todo", {"todo_id": SEED_IDS[0]}), token, era, "get_todo"
    )
    todo = json.loads(raw).get("result", {}).get("structuredContent", {}).get("todo") or {}
    # (the title may have been changed by update_todo runs: the seed's other fields stay)
    seeded = (todo.get("id"), todo.get("description"), todo.get("created_by"))
    if status != 200 or seeded != (SEED_IDS[0], "seeded", "bench"):
        raise RuntimeError(f"{name}: get_todo did not read the seeded todo: {raw[:300]!r}")
    before = todo_count(tenant_pk)
    body = era.body("create_todo", {"title": f"{name} check", "description": "row count"})
    status, _, raw = post(url, body, token, era, "create_todo")
    created = json.loads(raw).get("result", {}).get("structuredContent", {}).get("todo") or {}
    after = todo_count(tenant_pk)
    if status != 200 or after != before + 1 or todo_count(tenant_pk, created.get("id")) != 1:
        raise RuntimeError(
            f"{name}: create_todo did not insert one row ({before} -> {after}): {raw[:300]!r}"
        )
    return {"read_seeded": True, "rows_before": before, "rows_after": after}


def served(name: str, era: str) -> bool:
    """Whether a server is loaded on an era (dms only speaks the handshake era)."""
    return name != "dms" or era in DMS_ERAS


def server_order(rep: int, dms: bool) -> list[str]:
    """The servers of one repetition, fair next to ours; who goes first alternates."""
    order = ["dms", "baseline", "fair", "ours"] if dms else ["baseline", "fair", "ours"]
    return order[::-1] if rep % 2 else order


def run_load(
    args: argparse.Namespace,
    wrk: str,
    envs: dict[str, dict[str, str]],
    ports: dict[str, int],
    token: str,
    result: dict[str, Any],
    profile_hook: Callable[[dict[str, Server]], None] | None,
    dms_python: str | None = None,
) -> None:
    """Every server, scenario and era under wrk, per worker count; dms (django-mcp-server, run
    by ``dms_python``, its venv's) only when that is given."""
    runs: list[dict[str, Any]] = result.setdefault("load", {}).setdefault("runs", [])
    validations: dict[str, Any] = result["load"].setdefault("validation", {})
    apps = {
        "baseline": ("baseline_server:app", str(BENCH), PY),
        "fair": ("fair_server:app", str(BENCH), PY),
        "ours": ("config.asgi:application", None, PY),
        "floor": ("floor_app:app", str(BENCH), PY),
    }
    if dms_python:
        apps["dms"] = (DMS_APP, str(BENCH), dms_python)
    checked_dbs = [name for name in ("fair", "dms") if name in apps]
    for workers in args.workers:
        servers = {
            name: Server(
                name,
                ports[name],
                uvicorn_cmd(app, ports[name], workers, app_dir=d, python=py),
                envs[name],
            )
            for name, (app, d, py) in apps.items()
        }
        try:
            log(f"starting servers with {workers} worker(s)")
            for s in servers.values():
                s.start()
            first = ERAS[args.eras[0]]
            for s in servers.values():
                body = scenario_bodies("get_todo", first)[0]
                s.wait_ready(
                    lambda s=s, body=body, era=first: (
                        post(s.url, body, token, era, "get_todo", 2)[0] > 0
                    )
                )
                if workers > 1 and not LAUNCH["plain"]:  # every worker bound (app loaded)
                    s.wait_ready(lambda s=s, n=workers: listening_sockets(s.port) >= n)
            for era in (ERAS[name] for name in args.eras):
                tools = [n for n in ("baseline", "fair", "dms", "ours") if n in servers]
                if "dms" in servers and not served("dms", era.name):
                    validations[f"dms/{era.name}/refused/w{workers}"] = refused(
                        servers["dms"].url, token, era
                    )
                tools = [n for n in tools if served(n, era.name)]
                # the Lua check must recognise each server's tool errors: try a missing todo
                for name in tools:
                    missing = era.body("get_todo", {"todo_id": str(uuid.uuid4())})
                    status, _, raw = post(servers[name].url, missing, token, era, "get_todo")
                    detected = status >= 300 or looks_like_error(raw.decode(errors="replace"))
                    validations[f"{name}/{era.name}/error-detection/w{workers}"] = detected
                    if not detected:
                        raise RuntimeError(f"{name}: a tool error would not count: {raw[:300]!r}")
                for name in checked_dbs:
                    if served(name, era.name):
                        validations[f"{name}/{era.name}/database/w{workers}"] = db_check(
                            name,
                            servers[name].url,
                            token,
                            era,
                            int(envs[name]["BENCH_TENANT_PK"]),
                        )
                # every worker must have seen its first request before timing: validate + warm
                for scenario in args.scenarios:
                    for name in [*tools, "floor"]:
                        if name == "floor" and scenario != args.scenarios[0]:
                            continue
                        checked = scenario if name != "floor" else "get_todo"
                        validations[f"{name}/{era.name}/{scenario}/w{workers}"] = validate(
                            name, servers[name].url, checked, token, era
                        )
                        if args.warmup > 0:
                            run_wrk(
                                wrk,
                                servers[name].url,
                                token,
                                checked,
                                era,
                                connections=max(args.connections),
                                threads=args.threads,
                                duration=args.warmup,
                                check=False,
                            )
            for conns in args.connections:
                for rep in range(args.reps):
                    analyze_tables()
                    order = server_order(rep, "dms" in servers)
                    for era in (ERAS[name] for name in args.eras):
                        plan: list[tuple[str, str]] = [("floor", "get_todo")]
                        for scenario in args.scenarios:
                            plan += [(srv, scenario) for srv in order if served(srv, era.name)]
                        for srv, scenario in plan:
                            runs.append(
                                one_run(
                                    args,
                                    wrk,
                                    servers[srv],
                                    srv,
                                    scenario,
                                    era,
                                    token,
                                    workers,
                                    conns,
                                    rep,
                                )
                            )
                            time.sleep(args.pause)
            if profile_hook is not None and workers == 1:
                profile_hook(servers)
        finally:
            for s in servers.values():
                s.stop()
        result["load"]["summary"] = summarise_load(runs)


def refused(url: str, token: str, era: Era) -> dict[str, Any]:
    """dms on an era it does not speak: its refusal, checked (if it ever answers, say so)."""
    status, _, raw = post(
        url, era.body("get_todo", {"todo_id": SEED_IDS[0]}), token, era, "get_todo"
    )
    if status < 400:
        raise RuntimeError(
            f"dms answered a {era.name} request ({status}): load it on that era (bench/dms.py "
            f"DMS_ERAS): {raw[:300]!r}"
        )
    return {"status": status, "reply": raw[:300].decode(errors="replace")}


def one_run(
    args: argparse.Namespace,
    wrk: str,
    server: Server,
    srv: str,
    scenario: str,
    era: Era,
    token: str,
    workers: int,
    conns: int,
    rep: int,
) -> dict[str, Any]:
    assert server.proc is not None
    before_audit = audit_count() if srv == "ours" else 0
    conn0 = connection_counters()
    rusage0 = _children_cpu()
    cpu0 = cpu_snapshot(server.proc.pid)
    res = run_wrk(
        wrk,
        server.url,
        token,
        scenario if srv != "floor" else "get_todo",
        era,
        connections=conns,
        threads=args.threads,
        duration=args.duration,
        check=not args.no_check,
    )
    cpu1 = cpu_snapshot(server.proc.pid)
    wrk_cpu = _children_cpu() - rusage0
    cpu = cpu_delta(cpu0, cpu1)
    conn1 = connection_counters()
    calls = max(1, res["requests"])
    res.update(
        era=era.name,
        server=srv,
        scenario=scenario if srv != "floor" else "floor",
        workers=workers,
        connections=conns,
        rep=rep,
        server_cpu_ms_per_call=round(cpu["server"] * 1000 / calls, 3),
        postgres_cpu_ms_per_call=round(cpu["postgres"] * 1000 / calls, 3),
        redis_cpu_ms_per_call=round(cpu["redis"] * 1000 / calls, 3),
        machine_busy_pct=round(100 * cpu["machine_busy"] / max(1e-9, cpu["machine_total"]), 1),
        wrk_cpu_ms_per_call=round(wrk_cpu * 1000 / calls, 3),
        redis_new_connections_per_call=round(
            (conn1["redis_connections"] - conn0["redis_connections"]) / calls, 3
        ),
        pg_new_sessions_per_call=round((conn1["pg_sessions"] - conn0["pg_sessions"]) / calls, 3),
        redis_commands_per_call=round(
            (conn1["redis_commands"] - conn0["redis_commands"]) / calls, 2
        ),
    )
    res["server_rss_mib"] = tree_rss_mib(server.proc.pid)
    # each server process's CPU as % of one core over the run: shows how evenly the workers
    # share the load (keep-alive connections stay with the worker that accepted them)
    res["server_process_cpu_pct"] = sorted(
        (round(100 * c / max(1e-9, res["seconds"]), 1) for c in cpu["server_by_pid"].values()),
        reverse=True,
    )
    # CPU of every process that is not ours (other agents, CI ...), as % of the machine
    res["other_processes_cpu_pct"] = round(100 * cpu["other"] / max(1e-9, cpu["machine_total"]), 1)
    if srv == "ours":
        time.sleep(0.2)  # in-flight calls cut by wrk's stop still finish and are audited
        delta = audit_count() - before_audit
        res["audit_rows"] = delta
        res["audit_ok"] = res["requests"] <= delta <= res["requests"] + conns
    flag = "" if res["errors"] == 0 else f"  ERRORS={res['errors']} {res['first_error'][:120]}"
    log(
        f"{era.name:10s} w{workers} c{conns} rep{rep} {srv:8s} {res['scenario']:12s} "
        f"{res['rps']:9.1f}/s "
        f"p50 {res['p50_ms']:7.2f} ms p99 {res['p99_ms']:7.2f} ms "
        f"cpu {res['server_cpu_ms_per_call']:.2f} ms/call "
        f"new redis/pg conns per call {res['redis_new_connections_per_call']:.2f}/"
        f"{res['pg_new_sessions_per_call']:.2f} other-cpu {res['other_processes_cpu_pct']}% "
        f"rss {res['server_rss_mib']} MiB procs-cpu% {res['server_process_cpu_pct'][:3]}{flag}"
    )
    return res


# --- the Nagle check -------------------------------------------------------------------------


def stack_check(args: argparse.Namespace, wrk: str, token: str) -> dict[str, Any]:
    """The floor with 2 workers under the plain uvicorn CLI and under bench/serve.py."""
    out: dict[str, Any] = {}
    era = ERAS["handshake"]
    body = scenario_bodies("get_todo", era)[0]
    for label, plain in (("uvicorn CLI --workers 2", True), ("bench/serve.py --workers 2", False)):
        port = free_port()
        server = Server(
            f"stackcheck-{'cli' if plain else 'serve'}",
            port,
            uvicorn_cmd("floor_app:app", port, 2, app_dir=str(BENCH), plain=plain),
            {**ORIG_ENV, "PYTHONUNBUFFERED": "1"},
        )
        try:
            server.start()
            server.wait_ready(lambda s=server: post(s.url, body, token, era, "get_todo", 2)[0] > 0)
            run_wrk(wrk, server.url, token, "get_todo", era, connections=8, threads=1, duration=1)
            res = run_wrk(
                wrk, server.url, token, "get_todo", era, connections=8, threads=1, duration=2
            )
            out[label] = {k: res[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
            log(f"stack check, floor, {label}: {res['rps']:.0f}/s p50 {res['p50_ms']} ms")
        finally:
            server.stop()
    return out
