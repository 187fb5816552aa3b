"""Instructions per call: ours and the fair server under valgrind's cachegrind, in process.

CPU milliseconds on a shared 2-core box move with everything else running on it; the number of
instructions a call executes does not. This module counts them, per server, protocol era and
scenario, and the difference ours - fair is the governance tax in instructions.

**How.** One process per server runs under ``valgrind --tool=cachegrind --cache-sim=no`` (only
the instruction count ``Ir``): it builds the ASGI app (ours: ``config.asgi.application``, i.e.
``mcpauth.asgi.get_asgi_application()`` with the bench server's settings; fair:
``bench/fair_server.py``'s ``app``) and a twin built the same way, warms the process with the
twin (its lifespan and ``warmup`` calls of every era and scenario: lazy imports, compiled
statements, the JWKS), waits until it is down to one thread and closes its database
connections. Then for each (era, scenario) it forks twice. Each child runs the counted app's
lifespan, ``warmup`` calls and then N calls (N1 in the first child, N2 in the second) through
the ASGI interface (no socket, sequential, ``bench/asgi_driver.py``), checks every reply (200,
a JSON-RPC result, no error) and exits. Cachegrind writes one count per process
(``cachegrind.out.<pid>``) and a forked child's count starts from its parent's, so the two
children of a pair differ only by N2 - N1 calls:

    instructions per call = (I(child with N2) - I(child with N1)) / (N2 - N1)

Start-up (imports, ``django.setup()``, building the app), the lifespan, the connections, the
JWKS fetch and the warm-up cancel out; start-up is paid once per server, not once per count.
What is counted is the server process's own work (the event loop, FastMCP, Django, psycopg,
redis-py, the worker threads) plus this driver's few ASGI messages per call, the same for both
servers; PostgreSQL's and Redis's work is in their own processes and is not counted.

Run by ``bench/run.py`` (the ``instructions`` phase: ``--no-instructions``,
``--instructions-only``, ``--instr-calls``, ``--instr-warmup``), which passes the servers'
environment and the token. ``python bench/instructions.py --server ours|fair ...`` is what runs
under valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import CHILDREN, PY, RESULTS, ROOT, log

VALGRIND = "/usr/bin/valgrind"
COUNTED = ("ours", "fair")


# --- inside valgrind: build once, fork a child per count ------------------------------------


def build_apps(server: str) -> tuple[Any, Any]:
    """The app to count and a second one built the same way, to warm this process with.

    An app's lifespan runs once (it starts the MCP SDK's session manager), so the warm-up in
    this process, before the forks, runs a twin: each child then starts the counted app's
    lifespan itself.
    """
    if server == "ours":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        sys.path.insert(1, str(ROOT))
        from config.asgi import application
        from mcpauth.asgi import build_application

        return application, build_application()
    import fair_server

    return fair_server.app, fair_server.mcp.http_app(
        path="/mcp", stateless_http=True, json_response=True
    )


def drive(app: Any, token: str, plan: list[tuple[str, str, int]]) -> None:
    """The app's lifespan around ``(era, scenario, calls)`` checked calls, in order.

    Raises on a reply that is not a 200 carrying a JSON-RPC result without an error.
    """
    from asgi_driver import call, lifespan, request_headers
    from protocol import ERAS, looks_like_error, scenario_bodies, scenario_calls

    async def run() -> None:
        async with lifespan(app):
            for era_name, scenario, calls in plan:
                era = ERAS[era_name]
                headers = request_headers(token, era, scenario_calls(scenario)[0])
                bodies = [b.encode() for b in scenario_bodies(scenario, era)]
                for i in range(calls):
                    status, raw = await call(app, bodies[i % len(bodies)], headers)
                    text = raw.decode(errors="replace")
                    if status != 200 or looks_like_error(text) or '"result"' not in text:
                        raise RuntimeError(
                            f"{era_name} {scenario} call {i}: HTTP {status}: {text[:300]}"
                        )

    asyncio.run(run())


def quiesce(timeout: float = 120) -> None:
    """Wait until this process has one thread and no open database connection (before fork).

    The worker threads of a finished event loop stop on their own (anyio's when the loop's
    root task ends, the loop's default executor in ``asyncio.run``); under valgrind that takes
    a while.
    """
    from django.db import connections

    deadline = time.monotonic() + timeout
    while threading.active_count() > 1:
        if time.monotonic() > deadline:
            names = [t.name for t in threading.enumerate()]
            raise RuntimeError(f"threads still running before fork: {names}")
        time.sleep(0.2)
    gc.collect()  # the dead threads' connections
    connections.close_all()


def child_main(args: argparse.Namespace) -> None:
    """Build and warm the app, then fork one child per (era, scenario, count)."""
    token = os.environ["BENCH_TOKEN"]
    app, twin = build_apps(args.server)
    blocks = [(b.split(":")[0], b.split(":")[1]) for b in args.blocks.split(",")]
    # every code path each scenario takes, imported, compiled and cached before the forks
    drive(twin, token, [(era, scenario, args.warmup) for era, scenario in blocks])
    quiesce()
    counts = [int(n) for n in args.calls.split(",")]
    manifest: list[dict[str, Any]] = []
    for era_name, scenario in blocks:
        for n in counts:
            read_end, write_end = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                os.close(read_end)
                status, error = 0, ""
                try:
                    drive(app, token, [(era_name, scenario, args.warmup + n)])
                except BaseException as exc:  # reported to the parent, then exit
                    status, error = 1, f"{type(exc).__name__}: {exc}"[:2000]
                os.write(write_end, error.encode())
                os.close(write_end)
                os._exit(status)
            os.close(write_end)
            chunks = []
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
            os.close(read_end)
            _, wait_status = os.waitpid(pid, 0)
            manifest.append(
                {
                    "era": era_name,
                    "scenario": scenario,
                    "calls": n,
                    "pid": pid,
                    "exit": os.waitstatus_to_exitcode(wait_status),
                    "error": b"".join(chunks).decode(errors="replace"),
                }
            )
    Path(args.manifest).write_text(json.dumps(manifest))


# --- the bench side: launch, read the counts ------------------------------------------------


def cachegrind_total(path: Path) -> int:
    """The ``summary:`` line of a cachegrind output file (``Ir`` only with --cache-sim=no)."""
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path}")


def launch(
    server: str,
    env: dict[str, str],
    blocks: list[tuple[str, str]],
    warmup: int,
    calls: tuple[int, int],
    out_dir: Path,
) -> subprocess.Popen[Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("cachegrind.out.*"):
        stale.unlink()
    cmd = [
        VALGRIND,
        "--tool=cachegrind",
        "--cache-sim=no",
        f"--cachegrind-out-file={out_dir}/cachegrind.out.%p",
        "--log-file=" + str(out_dir / "valgrind.log"),
        PY,
        str(Path(__file__).resolve()),
        "--server",
        server,
        "--blocks",
        ",".join(f"{era}:{scenario}" for era, scenario in blocks),
        "--warmup",
        str(warmup),
        "--calls",
        f"{calls[0]},{calls[1]}",
        "--manifest",
        str(out_dir / "manifest.json"),
    ]
    # a fixed hash seed: the same dict and set layouts in every run
    full_env = {**env, "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
    log_file = open(out_dir / "stdout.log", "wb")  # closed with the process
    return CHILDREN.popen(cmd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)


def collect(server: str, out_dir: Path, calls: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """Per era and scenario: both counts and the instructions per call."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    runs: dict[tuple[str, str], dict[int, int]] = {}
    for entry in manifest:
        if entry["exit"] != 0:
            raise RuntimeError(
                f"{server} {entry['era']} {entry['scenario']} x{entry['calls']} failed: "
                f"{entry['error']}"
            )
        total = cachegrind_total(out_dir / f"cachegrind.out.{entry['pid']}")
        runs.setdefault((entry["era"], entry["scenario"]), {})[entry["calls"]] = total
    out: dict[str, dict[str, Any]] = {}
    n1, n2 = calls
    for (era, scenario), totals in runs.items():
        out.setdefault(era, {})[scenario] = {
            "calls": [n1, n2],
            "instructions": [totals[n1], totals[n2]],
            "instructions_per_call": round((totals[n2] - totals[n1]) / (n2 - n1)),
        }
    return out


def instruction_counts(
    envs: dict[str, dict[str, str]],
    token: str,
    eras: list[str],
    scenarios: list[str],
    warmup: int,
    calls: tuple[int, int],
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run ours and fair under cachegrind side by side; instructions per call and the tax."""
    if not Path(VALGRIND).exists():
        raise RuntimeError(f"{VALGRIND} not found: apt-get install valgrind")
    if calls[1] <= calls[0]:
        raise ValueError("--instr-calls N1,N2 needs N2 > N1")
    blocks = [(era, scenario) for era in eras for scenario in scenarios]
    root = RESULTS / "cachegrind"
    started = time.perf_counter()
    procs = {
        server: launch(
            server, {**envs[server], "BENCH_TOKEN": token}, blocks, warmup, calls, root / server
        )
        for server in COUNTED
    }
    log(
        f"cachegrind: {len(blocks)} era/scenario pairs x calls {calls[0]} and {calls[1]} "
        f"(+{warmup} warm-up) for {', '.join(COUNTED)}; logs in {root}"
    )
    deadline = time.monotonic() + timeout
    for server, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            CHILDREN.stop(proc)
            raise RuntimeError(f"cachegrind run of {server} timed out after {timeout} s") from None
        CHILDREN.stop(proc)
        if proc.returncode != 0:
            tail = (root / server / "stdout.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"cachegrind run of {server} failed ({proc.returncode}):\n{tail}")
    result: dict[str, Any] = {
        "tool": "valgrind --tool=cachegrind --cache-sim=no",
        "warmup": warmup,
        "calls": list(calls),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    per_server = {server: collect(server, root / server, calls) for server in COUNTED}
    result.update(per_server)
    tax: dict[str, dict[str, int]] = {}
    for era in eras:
        for scenario in scenarios:
            ours = per_server["ours"][era][scenario]["instructions_per_call"]
            fair = per_server["fair"][era][scenario]["instructions_per_call"]
            tax.setdefault(era, {})[scenario] = ours - fair
            log(
                f"instructions/call {era:10s} {scenario:12s} ours {ours:>12,} fair {fair:>12,} "
                f"tax {ours - fair:>12,} ({ours / fair:.2f}x)"
            )
    result["tax"] = tax
    return result


def main() -> None:
    p = argparse.ArgumentParser(description="What runs under cachegrind (see the module doc).")
    p.add_argument("--server", choices=COUNTED, required=True)
    p.add_argument("--blocks", required=True, help="era:scenario,... e.g. handshake:get_todo")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--calls", default="10,40", help="N1,N2")
    p.add_argument("--manifest", required=True, help="where to write the children's pids")
    child_main(p.parse_args())


if __name__ == "__main__":
    main()
