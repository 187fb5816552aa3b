"""``make bench``: load-test the governed MCP server against the seed quickstart and a floor.

One command (see bench/README.md for how to read the output):

1. installs ``wrk`` with apt-get when missing (and ``py-spy`` into the venv for the profile);
2. creates the PostgreSQL database ``mcp_bench``, migrates it, seeds the bench tenant's todos,
   flushes Redis db 11, serves the bench RSA key's JWKS on loopback from a thread;
3. starts three servers under uvicorn on loopback ports, for 1 and then 2 workers:
   **baseline** (``bench/baseline_server.py``, the quickstart on FastMCP's ``JWTVerifier`` and a
   dict), **ours** (``config.asgi:application``, full stack: PostgreSQL, Redis, audit rows) and
   **floor** (``bench/floor_app.py``, parse JSON and answer a fixed result);
4. drives ``tools/call`` load with ``wrk`` + ``bench/mcp.lua`` for each scenario, interleaving
   the servers (floor, baseline, ours / ours, baseline ...) over several repetitions, and
   reports medians and ratios;
5. measures per-call micro-figures in-process (token verification, tenant + scope resolution,
   rate-limit round trips, audit insert, thread hops);
6. profiles ours under ``get_todo`` load with py-spy (1 worker);
7. audit at scale: 1,000,000 ``AuditEvent`` rows by COPY, then the admin changelist (default
   page, each filter, searches, date drill-down), ``audit_export`` (time, peak RSS) and
   ``audit_prune`` of half of them;
8. prints a table and writes ``bench/results/<timestamp>.json`` and ``bench/results/latest.json``.

Every child process is started in its own process group and ended (TERM, then KILL) on exit,
on error and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import contextvars
import datetime as dt
import fcntl
import importlib.metadata
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PY = sys.executable
VENV_BIN = Path(sys.executable).parent
LUA = BENCH / "mcp.lua"

sys.path.insert(0, str(BENCH))
import profsum  # noqa: E402

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "mcp_bench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/11"

TENANT = "bench-org"
CLIENT_ID = "bench-client"
SUBJECT = "bench-user"
SEED_TODOS = 64
#: Same namespace as bench/baseline_server.py: both servers hold the same todo ids.
SEED_NAMESPACE = uuid.UUID("6f1c2c8e-3b1a-4f57-9d0e-b3f0c0ffee00")
SEED_IDS = [str(uuid.uuid5(SEED_NAMESPACE, f"todo-{i}")) for i in range(SEED_TODOS)]

#: The environment as we were started, before setup_django() changes ours.
ORIG_ENV = dict(os.environ)

SCENARIOS = ("get_todo", "list_todos", "create_todo", "update_todo")
SERVERS = ("baseline", "ours", "floor")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- child processes ------------------------------------------------------------------------


class Children:
    """Every process we start, each in its own process group, ended on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.lock = threading.Lock()

    def popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("cwd", ROOT)
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        with self.lock:
            self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # the group may outlive its leader (uvicorn workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
            proc.wait(timeout=5)
        with self.lock:
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        with self.lock:
            procs = list(self.procs)
        for proc in procs:
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)


CHILDREN = Children()
atexit.register(CHILDREN.stop_all)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def run_checked(
    cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = CHILDREN.popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        CHILDREN.stop(proc)
        raise RuntimeError(f"timed out after {timeout}s: {' '.join(cmd)}") from None
    CHILDREN.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    if not quiet:
        print(out)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def run_with_rusage(
    cmd: list[str], *, env: dict[str, str], timeout: float, stdout: Any = subprocess.DEVNULL
) -> dict[str, Any]:
    """Run a child; return wall time, exit status, its CPU (os.wait4) and peak RSS (VmHWM)."""
    start = time.perf_counter()
    proc = CHILDREN.popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    stderr_chunks: list[bytes] = []

    def drain() -> None:
        assert proc.stderr is not None
        for chunk in iter(lambda: proc.stderr.read(4096), b""):  # type: ignore[union-attr]
            stderr_chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    hwm_kib = 0
    while True:
        # ru_maxrss from wait4 is useless here: Linux carries the high-water mark across
        # execve, so it starts at the forking bench process's own RSS. VmHWM belongs to the
        # child's fresh address space; it only grows, so the last reading is the peak.
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        hwm_kib = max(hwm_kib, int(line.split()[1]))
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            CHILDREN.stop(proc)
            raise RuntimeError(f"timed out after {timeout}s: {' '.join(cmd)}")
        time.sleep(0.05)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    with CHILDREN.lock:
        if proc in CHILDREN.procs:
            CHILDREN.procs.remove(proc)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    err = b"".join(stderr_chunks).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    return {
        "wall_s": round(wall, 2),
        "user_cpu_s": round(ru.ru_utime, 2),
        "sys_cpu_s": round(ru.ru_stime, 2),
        "peak_rss_mib": round(hwm_kib / 1024, 1),
        "stderr_tail": err.strip().splitlines()[-3:],
    }


# --- tools: wrk, py-spy -----------------------------------------------------------------------


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    log("wrk not found: apt-get update && apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_checked(["apt-get", "update"], env=env, timeout=300)
    run_checked(["apt-get", "install", "-y", "wrk"], env=env, timeout=300)
    path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk is still missing after apt-get install -y wrk")
    return path


def ensure_py_spy() -> str:
    path = VENV_BIN / "py-spy"
    if path.exists():
        return str(path)
    log("py-spy not found: pip install py-spy into the venv")
    run_checked([PY, "-m", "pip", "install", "--quiet", "py-spy"], timeout=300)
    if not path.exists():
        raise RuntimeError("py-spy is still missing after pip install")
    return str(path)


# --- keys, tokens, the JWKS server ----------------------------------------------------------


class Issuer:
    """An RSA key, its JWKS served over loopback HTTP from a thread, and a token minter."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        self.kid = "bench-key-1"
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.fetches = 0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/jwks.json":
                    state.fetches += 1
                    body = state.jwks
                elif self.path == "/.well-known/openid-configuration":
                    body = json.dumps(
                        {"issuer": state.url, "jwks_uri": f"{state.url}/jwks.json"}
                    ).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"

    def mint(self, audience: str, ttl: int = 6 * 3600) -> str:
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": audience,
            "sub": SUBJECT,
            "client_id": CLIENT_ID,
            "org_id": TENANT,
            "scope": "todo:read todo:write",
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims, self.private, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"}
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- database and cache ---------------------------------------------------------------------


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def drop_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    client.flushdb()
    client.close()


def server_versions() -> dict[str, str]:
    import psycopg
    import redis

    out: dict[str, str] = {}
    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL) as conn:
        row = conn.execute("SELECT version()").fetchone()
        out["postgresql"] = row[0] if row else "?"
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        out["redis"] = str(client.info("server").get("redis_version"))
        client.close()
    return out


# --- machine facts ------------------------------------------------------------------------


def machine_facts(wrk: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_mib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_mib = int(line.split()[1]) // 1024
    versions = {}
    for dist in (
        "django",
        "fastmcp",
        "mcp",
        "uvicorn",
        "starlette",
        "pydantic",
        "pyjwt",
        "cryptography",
        "joserfc",
        "psycopg",
        "redis",
        "django-ratelimit",
        "asgiref",
        "anyio",
        "h11",
        "uvloop",
        "httptools",
    ):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    wrk_version = ""
    with contextlib.suppress(Exception):
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=5)
        wrk_version = (out.stdout or out.stderr).splitlines()[0]
    git = {}
    with contextlib.suppress(Exception):
        git["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout
        git["dirty_files"] = len([s for s in status.splitlines() if s.strip()])
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_mib": mem_mib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "uvicorn_loop": "uvloop" if versions.get("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if versions.get("httptools") else "h11",
        "wrk": wrk_version,
        "git": git,
        "fdatasync": fdatasync_latency(),
        "loadavg_at_start": os.getloadavg(),
        **server_versions(),
    }


def fdatasync_latency(samples: int = 100) -> dict[str, float]:
    """Median/p99 ms of an 8 KiB write + fdatasync on this disk (what a durable COMMIT waits)."""
    path = RESULTS / f".fsync-probe-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    block = os.urandom(8192)
    times = []
    try:
        for i in range(samples):
            os.pwrite(fd, block, (i % 16) * 8192)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 3), "p99_ms": round(times[-2], 3)}


# --- CPU accounting from /proc ------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, str, float]]:
    """pid → (ppid, comm, cpu seconds) for every process."""
    out: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        lpar, rpar = raw.index("("), raw.rindex(")")
        comm = raw[lpar + 1 : rpar]
        fields = raw[rpar + 2 :].split()
        ppid = int(fields[1])
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        out[int(entry)] = (ppid, comm, cpu)
    return out


def _tree(stats: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(kids.get(pid, []))
    return seen


def cpu_snapshot(server_pid: int) -> dict[str, Any]:
    """CPU seconds so far per process (categorised) and for the whole machine."""
    stats = _proc_stats()
    tree = _tree(stats, server_pid)
    me = os.getpid()
    procs: dict[int, tuple[str, float]] = {}
    for pid, (_, comm, cpu) in stats.items():
        if pid in tree:
            kind = "server"
        elif pid == me:
            kind = "bench"
        elif comm.startswith("postgres"):
            kind = "postgres"
        elif comm.startswith("redis"):
            kind = "redis"
        else:
            kind = "other"
        procs[pid] = (kind, cpu)
    total = busy = 0.0
    with contextlib.suppress(OSError, IndexError):
        # user nice system idle iowait irq softirq steal (guest time is already in user/nice)
        values = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        total = sum(values) / CLK_TCK
        busy = (sum(values) - values[3] - values[4]) / CLK_TCK
    return {"procs": procs, "machine_total": total, "machine_busy": busy}


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds spent between two snapshots, per category (processes that exited in between
    are not counted; processes that started are counted whole)."""
    out: dict[str, Any] = {"server": 0.0, "bench": 0.0, "postgres": 0.0, "redis": 0.0}
    out["other"] = 0.0
    per_server_pid: dict[int, float] = {}
    old = before["procs"]
    for pid, (kind, cpu) in after["procs"].items():
        prev = old.get(pid)
        spent = max(0.0, cpu - (prev[1] if prev else 0.0))
        out[kind] += spent
        if kind == "server":
            per_server_pid[pid] = spent
    out["server_by_pid"] = per_server_pid
    out["machine_total"] = after["machine_total"] - before["machine_total"]
    out["machine_busy"] = after["machine_busy"] - before["machine_busy"]
    return out


def tree_rss_mib(root: int) -> float:
    total = 0
    for pid in _tree(_proc_stats(), root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tree_pids(root: int) -> list[int]:
    return sorted(_tree(_proc_stats(), root))


# --- servers --------------------------------------------------------------------------------


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (one per SO_REUSEPORT worker)."""
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                count += 1
    return count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, name: str, port: int, cmd: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.port = port
        self.cmd = cmd
        self.env = env
        self.proc: subprocess.Popen[Any] | None = None
        self.log_path = RESULTS / f".server-{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.log_file = open(self.log_path, "ab")
        self.proc = CHILDREN.popen(
            self.cmd, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 60) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited early; see {self.log_path}:\n"
                    + self.log_path.read_text()[-3000:]
                )
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready; see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            CHILDREN.stop(self.proc)
            self.proc = None
        with contextlib.suppress(Exception):
            self.log_file.close()


#: How servers are launched; set from the command line in main().
LAUNCH: dict[str, Any] = {"plain": False, "loop": "auto", "http": "auto"}


def uvicorn_cmd(
    app: str, port: int, workers: int, app_dir: str | None = None, plain: bool | None = None
) -> list[str]:
    """``uvicorn APP --workers N`` via bench/serve.py (TCP_NODELAY; see there) or the CLI."""
    if plain if plain is not None else LAUNCH["plain"]:
        cmd = [PY, "-m", "uvicorn", app, "--no-access-log"]
    else:
        cmd = [PY, str(BENCH / "serve.py"), app]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cmd += ["--log-level", "warning", "--loop", LAUNCH["loop"], "--http", LAUNCH["http"]]
    if app_dir:
        cmd += ["--app-dir", app_dir]
    return cmd


# --- requests -------------------------------------------------------------------------------


def rpc_body(tool: str, arguments: dict[str, Any]) -> str:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        },
        separators=(",", ":"),
    )


def scenario_bodies(scenario: str) -> list[str]:
    if scenario == "get_todo":
        return [rpc_body("get_todo", {"todo_id": i}) for i in SEED_IDS]
    if scenario == "list_todos":
        return [rpc_body("list_todos", {"limit": 20})]
    if scenario == "create_todo":
        return [rpc_body("create_todo", {"title": "bench todo", "description": "created by wrk"})]
    if scenario == "update_todo":
        return [
            rpc_body(
                "update_todo",
                {"todo_id": i, "title": f"bench updated {n % 7}", "completed": n % 2 == 0},
            )
            for n, i in enumerate(SEED_IDS)
        ]
    raise ValueError(scenario)


#: Extra request headers, set from the command line in main().
HEADERS: dict[str, str] = {"protocol_version": ""}


def post(url: str, body: str, token: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **(
                {"MCP-Protocol-Version": HEADERS["protocol_version"]}
                if HEADERS["protocol_version"]
                else {}
            ),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def looks_like_error(body: str) -> bool:
    """The same test as bench/mcp.lua's response(): a tool error or any "error" key."""
    return bool(re.search(r'"isError":\s*true', body)) or '"error"' in body


def validate(server: str, url: str, scenario: str, token: str) -> dict[str, Any]:
    """One request of the scenario, checked in Python (status, JSON-RPC, result shape)."""
    status, headers, raw = post(url, scenario_bodies(scenario)[0], token)
    problems = []
    if status != 200:
        problems.append(f"HTTP {status}")
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = {}
        problems.append("body is not JSON")
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, dict):
        problems.append(f"no result: {raw[:300]!r}")
        result = {}
    if result.get("isError"):
        problems.append(f"isError: {raw[:300]!r}")
    data = result.get("structuredContent") or {}
    if server != "floor":
        if scenario in ("get_todo", "create_todo", "update_todo"):
            if not isinstance(data.get("todo"), dict) or "id" not in data["todo"]:
                problems.append(f"no todo in result: {raw[:300]!r}")
        elif scenario == "list_todos":
            todos = data.get("todos")
            if not isinstance(todos, list) or len(todos) != 20 or "next_cursor" not in data:
                problems.append(f"bad list result: {raw[:300]!r}")
    if server == "ours" and "x-request-id" not in headers:
        problems.append("no X-Request-ID")
    if b"error" in raw or b'"isError":true' in raw:
        problems.append(f"error marker in a successful body: {raw[:300]!r}")
    if problems:
        raise RuntimeError(f"{server} {scenario}: validation failed: {'; '.join(problems)}")
    return {"status": status, "bytes": len(raw)}


# --- wrk ------------------------------------------------------------------------------------


def run_wrk(
    wrk: str,
    url: str,
    token: str,
    scenario: str,
    *,
    connections: int,
    threads: int,
    duration: float,
    check: bool = True,
) -> dict[str, Any]:
    env = {
        **ORIG_ENV,
        "BENCH_TOKEN": token,
        "BENCH_BODIES": "\n".join(scenario_bodies(scenario)),
        "BENCH_CHECK": "1" if check else "0",
        "BENCH_PROTOCOL_VERSION": HEADERS["protocol_version"],
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


# --- Django in this process -----------------------------------------------------------------


def django_env(issuer: Issuer, ours_port: int, rate: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "SECRET_KEY": "bench-secret-key-not-for-production-" + "x" * 20,
        "BASE_URL": f"http://127.0.0.1:{ours_port}",
        "MCPAUTH_ISSUER": issuer.url,
        "MCPAUTH_JWKS_URL": issuer.jwks_url,
        "MCPAUTH_TENANT_CLAIM": "org_id",
        "MCPAUTH_RATE_LIMIT": rate,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": DATABASE_URL,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    # only this process (the test Client's host); the servers keep the default ALLOWED_HOSTS
    os.environ["ALLOWED_HOSTS"] = "localhost 127.0.0.1 testserver"
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def seed_todos() -> int:
    from mcpauth.models import Tenant
    from todos.models import Todo

    tenant, _ = Tenant.objects.get_or_create(external_id=TENANT, defaults={"name": TENANT})
    Todo.all_tenants.bulk_create(
        [
            Todo(
                id=uuid.UUID(tid),
                tenant=tenant,
                title=f"Seeded todo {n}",
                description="seeded",
                created_by="bench",
            )
            for n, tid in enumerate(SEED_IDS)
        ]
    )
    return int(tenant.pk)


def analyze_tables() -> None:
    """Refresh planner statistics, as autovacuum does on a database in steady state.

    The create scenarios add thousands of rows within seconds; without fresh statistics the
    planner keeps the estimate of the 64 seeded rows and sorts a whole tenant for a page of 20.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE todos_todo, audit_auditevent")


def audit_count() -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_auditevent")
        return int(cur.fetchone()[0])


def connection_counters() -> dict[str, int]:
    """New connections so far: Redis (server-wide) and PostgreSQL sessions on the bench DB."""
    import redis
    from django.db import connection

    out = {"redis_connections": -1, "redis_commands": -1, "pg_sessions": -1}
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        stats = client.info("stats")
        out["redis_connections"] = int(stats["total_connections_received"])
        out["redis_commands"] = int(stats["total_commands_processed"])
        client.close()
    with contextlib.suppress(Exception), connection.cursor() as cur:
        # (per-backend statistics reach pg_stat_database late; sessions are counted at connect)
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        out["pg_sessions"] = int(cur.fetchone()[0])
    return out


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
    from mcpauth import ratelimit
    from mcpauth.conf import get_settings
    from mcpauth.context import CallContext
    from mcpauth.middleware import parse_envelope
    from mcpauth.tokens import principal_for, verify
    from todos import services

    def n(base: int) -> int:
        return max(50, int(base * scale))

    out: dict[str, Any] = {}
    vt = verify(token)  # fetches the JWKS once; later calls use cached keys
    out["token_verify (mcpauth.tokens.verify, cached keys)"] = _timeit(
        lambda: verify(token), n(3000)
    )

    principal = principal_for(vt)
    out["tenant + scopes (tenancy.resolve + scopes.permissions_for, cached)"] = _timeit(
        lambda: principal_for(vt), n(20000)
    )
    body = scenario_bodies("get_todo")[0].encode()
    conf = get_settings()

    def envelope() -> None:
        parse_envelope(
            CallContext(request_id="x", client_ip="127.0.0.1", user_agent="b"), body, conf
        )

    out["parse_envelope (JSON-RPC body)"] = _timeit(envelope, n(20000))
    # the IP pre-check has changed shape over time; measure whichever this tree has
    if hasattr(ratelimit, "check_anonymous"):
        out["rate limit: check_anonymous (Redis GET)"] = _timeit(
            lambda: ratelimit.check_anonymous("127.0.0.1", increment=False), n(3000)
        )
    elif hasattr(ratelimit, "anonymous_throttle"):
        out["rate limit: anonymous_throttle (in-process)"] = _timeit(
            lambda: ratelimit.anonymous_throttle("127.0.0.1"), n(20000)
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


# --- round trips per call, in process ------------------------------------------------------


def round_trips(token: str, calls: int = 40) -> dict[str, Any]:
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

    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"user-agent", b"bench-inprocess"),
    ]
    if HEADERS["protocol_version"]:
        headers.append((b"mcp-protocol-version", HEADERS["protocol_version"].encode()))

    async def one(body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/mcp",
            "raw_path": b"/mcp",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await application(scope, receive, send)
        return status, b"".join(chunks)

    async def run_all() -> dict[str, Any]:
        startup_done = asyncio.Event()
        shutdown = asyncio.Event()
        lifespan_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await lifespan_queue.put({"type": "lifespan.startup"})

        async def l_receive() -> dict[str, Any]:
            msg = await lifespan_queue.get()
            return msg

        async def l_send(message: dict[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup"):
                startup_done.set()
            if message["type"].startswith("lifespan.shutdown"):
                shutdown.set()

        lifespan = asyncio.create_task(application({"type": "lifespan"}, l_receive, l_send))
        await asyncio.wait_for(startup_done.wait(), 30)
        out: dict[str, Any] = {}
        try:
            for scenario in SCENARIOS:
                bodies = [b.encode() for b in scenario_bodies(scenario)]
                for i in range(5):  # warm: thread pools, connections, caches
                    await one(bodies[i % len(bodies)])
                for key in counts:
                    counts[key] = 0
                statements.clear()
                t0 = time.perf_counter()
                statuses = []
                for i in range(calls):
                    status, raw = await one(bodies[i % len(bodies)])
                    statuses.append(status == 200 and not looks_like_error(raw.decode()))
                wall = time.perf_counter() - t0
                out[scenario] = {
                    "calls": calls,
                    "ok": all(statuses),
                    "in_process_ms_per_call": round(wall * 1000 / calls, 3),
                    **{f"{k}_per_call": round(v / calls, 2) for k, v in counts.items()},
                    "statements_per_call": {
                        k: round(v / calls, 2)
                        for k, v in sorted(statements.items(), key=lambda kv: -kv[1])
                    },
                }
        finally:
            await lifespan_queue.put({"type": "lifespan.shutdown"})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shutdown.wait(), 10)
            lifespan.cancel()
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


# --- audit at scale -------------------------------------------------------------------------

OUTCOMES = [
    ("ok", 85),
    ("tool_error", 5),
    ("denied", 4),
    ("rate_limited", 3),
    ("unauthenticated", 2),
    ("invalid_request", 1),
]
TOOLS = ["create_todo", "list_todos", "get_todo", "update_todo", "delete_todo"]
N_TENANTS = 50
N_CLIENTS = 200
AUDIT_DAYS = 60


def seed_audit_rows(rows: int) -> dict[str, Any]:
    from django.db import connection

    from mcpauth.models import Tenant

    Tenant.objects.bulk_create(
        [Tenant(external_id=f"tenant-{t:02d}", name=f"Tenant {t:02d}") for t in range(N_TENANTS)],
        ignore_conflicts=True,
    )
    rnd = random.Random(1234)
    outcome_pool = [o for o, w in OUTCOMES for _ in range(w)]
    status_of = {
        "ok": 200,
        "tool_error": 200,
        "denied": 403,
        "rate_limited": 429,
        "unauthenticated": 401,
        "invalid_request": 400,
    }
    end = dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(days=AUDIT_DAYS)
    step = (end - start) / rows
    cols = (
        "created_at, request_id, tenant, client_id, subject, token_id, scopes, method, tool, "
        "outcome, status, error_code, error_message, duration_ms, client_ip, user_agent, "
        "arguments"
    )
    known: dict[str, str] = {}
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE audit_auditevent RESTART IDENTITY")
        connection.ensure_connection()
        raw = connection.connection  # the psycopg connection
        with raw.cursor() as cur, cur.copy(f"COPY audit_auditevent ({cols}) FROM STDIN") as copy:
            buf: list[str] = []
            for i in range(rows):
                created = (start + step * i).isoformat()
                client = rnd.randrange(N_CLIENTS)
                tenant = f"tenant-{client % N_TENANTS:02d}"
                outcome = outcome_pool[rnd.randrange(100)]
                is_tool = rnd.random() < 0.9
                tool = TOOLS[rnd.randrange(5)] if is_tool else ""
                method = "tools/call" if is_tool else ("tools/list" if i % 2 else "initialize")
                unauth = outcome == "unauthenticated"
                rid = f"{rnd.getrandbits(128):032x}"
                err = "" if outcome == "ok" else outcome
                args = (
                    f'{{"todo_id": "{uuid.UUID(int=rnd.getrandbits(128))}"}}' if is_tool else "{}"
                )
                buf.append(
                    f"{created}\t{rid}\t{'' if unauth else tenant}\t"
                    f"{'' if unauth else f'client-{client:03d}'}\t"
                    f"{'' if unauth else f'user-{client:03d}'}\t"
                    f"{'' if unauth else f'jti-{rid[:16]}'}\t"
                    f"{'' if unauth else 'todo:read todo:write'}\t{method}\t{tool}\t{outcome}\t"
                    f"{status_of[outcome]}\t{err}\t{err and 'bench ' + err}\t"
                    f"{rnd.random() * 20:.3f}\t10.0.{client % 250}.{i % 250}\tbench-seed/1.0\t"
                    f"{args}\n"
                )
                if i == rows // 2:
                    known = {
                        "request_id": rid,
                        "client_id": f"client-{client:03d}",
                        "subject": f"user-{client:03d}",
                    }
                if len(buf) >= 20000:
                    copy.write("".join(buf))
                    buf.clear()
            if buf:
                copy.write("".join(buf))
        copy_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        cursor.execute("ANALYZE audit_auditevent")
        analyze_s = time.perf_counter() - t1
        cursor.execute("SELECT pg_total_relation_size('audit_auditevent')")
        size = int(cursor.fetchone()[0])
    return {
        "rows": rows,
        "copy_s": round(copy_s, 2),
        "analyze_s": round(analyze_s, 2),
        "table_mib_with_indexes": round(size / 2**20, 1),
        "span_days": AUDIT_DAYS,
        "known": known,
    }


def time_admin(known: dict[str, str]) -> list[dict[str, Any]]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    User = get_user_model()
    user, _ = User.objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    url = reverse("admin:audit_auditevent_changelist")
    now = dt.datetime.now(dt.UTC)
    pages = [
        ("default page", ""),
        ("filter outcome=denied", "?outcome=denied"),
        ("filter tool=get_todo", "?tool=get_todo"),
        ("filter tenant=tenant-07", "?tenant=tenant-07"),
        (f"filter client_id={known.get('client_id')}", f"?client_id={known.get('client_id')}"),
        ("filter outcome+tenant", "?outcome=denied&tenant=tenant-07"),
        (f"search client id ({known.get('client_id')})", f"?q={known.get('client_id')}"),
        ("search request id (1 row)", f"?q={known.get('request_id')}"),
        ("date drill-down: year", f"?created_at__year={now.year}"),
        (
            "date drill-down: year+month",
            f"?created_at__year={now.year}&created_at__month={now.month}",
        ),
        (
            "date drill-down: day",
            f"?created_at__year={now.year}&created_at__month={now.month}&created_at__day={now.day}",
        ),
        ("page 50", "?p=50"),
        ("detail view (one row)", None),
    ]
    from audit.models import AuditEvent

    some_pk = AuditEvent.objects.order_by("-id").values_list("pk", flat=True).first()
    results = []
    for label, query in pages:
        target = (
            reverse("admin:audit_auditevent_change", args=[some_pk])
            if query is None
            else url + query
        )
        times = []
        queries = 0
        sql_ms = 0.0
        status = 0
        size = 0
        for attempt in range(3):
            connection.force_debug_cursor = False
            with CaptureQueriesContext(connection) as ctx:
                t0 = time.perf_counter()
                resp = client.get(target)
                times.append((time.perf_counter() - t0) * 1000)
            status = resp.status_code
            size = len(resp.content)
            if attempt == 0:
                queries = len(ctx.captured_queries)
                sql_ms = sum(float(q.get("time") or 0) for q in ctx.captured_queries) * 1000
                slowest = sorted(
                    ctx.captured_queries, key=lambda q: float(q.get("time") or 0), reverse=True
                )[:2]
        results.append(
            {
                "slowest_sql": [
                    {"ms": round(float(q.get("time") or 0) * 1000, 1), "sql": q["sql"][:600]}
                    for q in slowest
                ],
                "page": label,
                "url": target,
                "status": status,
                "bytes": size,
                "first_ms": round(times[0], 1),
                "median_ms": round(statistics.median(times), 1),
                "queries": queries,
                "sql_ms_first": round(sql_ms, 1),
            }
        )
    return results


def time_export(env: dict[str, str], formats: list[str]) -> list[dict[str, Any]]:
    # the same command exporting nothing: the process's own footprint, for comparison
    idle = run_with_rusage(
        [PY, "manage.py", "audit_export", "--since", "2000-01-01", "--until", "2000-01-02"],
        env=env,
        timeout=300,
    )
    out: list[dict[str, Any]] = [
        {"format": "csv (0 rows: process baseline)", **idle, "output_mib": 0.0, "lines": 1}
    ]
    for fmt in formats:
        target = RESULTS / f".audit-export-{os.getpid()}.{fmt}"
        try:
            stats = run_with_rusage(
                [PY, "manage.py", "audit_export", "--format", fmt, "--output", str(target)],
                env=env,
                timeout=900,
            )
            size = target.stat().st_size if target.exists() else 0
            with target.open("rb") as fh:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        finally:
            with contextlib.suppress(OSError):
                target.unlink()
        out.append({"format": fmt, **stats, "output_mib": round(size / 2**20, 1), "lines": lines})
    return out


def time_prune(env: dict[str, str], total_rows: int) -> dict[str, Any]:
    from django.db import connection

    half_days = AUDIT_DAYS // 2
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM audit_auditevent WHERE created_at < now() - %s::interval",
            [f"{half_days} days"],
        )
        qualifying = int(cur.fetchone()[0])
    stats = run_with_rusage(
        [PY, "manage.py", "audit_prune", "--older-than", f"{half_days}d", "--yes"],
        env=env,
        timeout=900,
    )
    after = audit_count()
    return {
        "older_than": f"{half_days}d",
        "rows_before": total_rows,
        "qualifying": qualifying,
        "rows_after": after,
        "deleted": total_rows - after,
        **stats,
    }


# --- the load matrix -------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


PER_RUN_MEDIANS = (
    "p90_ms",
    "p999_ms",
    "server_cpu_ms_per_call",
    "postgres_cpu_ms_per_call",
    "redis_cpu_ms_per_call",
    "wrk_cpu_ms_per_call",
    "redis_new_connections_per_call",
    "pg_new_sessions_per_call",
    "redis_commands_per_call",
    "machine_busy_pct",
    "other_processes_cpu_pct",
    "server_rss_mib",
)


def summarise_load(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, int, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["workers"], r["connections"], r["scenario"], r["server"]), []).append(
            r
        )
    summary: list[dict[str, Any]] = []
    keys = sorted(
        {(w, c, s) for (w, c, s, srv) in groups if srv != "floor"},
        key=lambda k: (k[0], k[1], SCENARIOS.index(k[2])),
    )
    for w, c, s in keys:
        row: dict[str, Any] = {"workers": w, "connections": c, "scenario": s}
        for srv in SERVERS:
            rs = groups.get((w, c, s if srv != "floor" else "floor", srv), [])
            if not rs:
                continue
            row[srv] = {
                "reps": len(rs),
                "rps": median([r["rps"] for r in rs]),
                "rps_all": [r["rps"] for r in rs],
                "p50_ms": median([r["p50_ms"] for r in rs]),
                "p99_ms": median([r["p99_ms"] for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
            }
            for key in PER_RUN_MEDIANS:
                row[srv][key] = median([r.get(key, 0) for r in rs])
            if srv == "ours":
                row[srv]["audit_rows_ok"] = all(r.get("audit_ok", True) for r in rs)
        b, o, f = row.get("baseline"), row.get("ours"), row.get("floor")
        if b and o and b["rps"]:
            row["ours_over_baseline_rps"] = round(o["rps"] / b["rps"], 3)
            row["ours_over_baseline_p50"] = (
                round(o["p50_ms"] / b["p50_ms"], 2) if b["p50_ms"] else None
            )
        if f and o and f["rps"]:
            row["ours_over_floor_rps"] = round(o["rps"] / f["rps"], 3)
        if f and b and f["rps"]:
            row["baseline_over_floor_rps"] = round(b["rps"] / f["rps"], 3)
        summary.append(row)
    return summary


def run_load(
    args: argparse.Namespace,
    wrk: str,
    issuer: Issuer,
    env: dict[str, str],
    ports: dict[str, int],
    token: str,
    result: dict[str, Any],
    profile_hook: Callable[[dict[str, Server]], None] | None,
) -> None:
    runs: list[dict[str, Any]] = result.setdefault("load", {}).setdefault("runs", [])
    validations: dict[str, Any] = result["load"].setdefault("validation", {})
    base_env = {**ORIG_ENV, "PYTHONUNBUFFERED": "1"}
    baseline_env = {
        **base_env,
        "BENCH_JWKS_URL": issuer.jwks_url,
        "BENCH_ISSUER": issuer.url,
        "BENCH_AUDIENCE": f"{env['BASE_URL']}/mcp",
        "BENCH_BASE_URL": f"http://127.0.0.1:{ports['baseline']}",
        "BENCH_SEED_TODOS": str(SEED_TODOS),
    }
    ours_env = {**base_env, **env}
    for workers in args.workers:
        servers = {
            "baseline": Server(
                "baseline",
                ports["baseline"],
                uvicorn_cmd("baseline_server:app", ports["baseline"], workers, app_dir=str(BENCH)),
                baseline_env,
            ),
            "ours": Server(
                "ours",
                ports["ours"],
                uvicorn_cmd("config.asgi:application", ports["ours"], workers),
                ours_env,
            ),
            "floor": Server(
                "floor",
                ports["floor"],
                uvicorn_cmd("floor_app:app", ports["floor"], workers, app_dir=str(BENCH)),
                base_env,
            ),
        }
        try:
            log(f"starting servers with {workers} worker(s)")
            for s in servers.values():
                s.start()
            for s in servers.values():
                body = scenario_bodies("get_todo")[0]
                s.wait_ready(lambda s=s, body=body: post(s.url, body, token, timeout=2)[0] > 0)
                if workers > 1 and not LAUNCH["plain"]:  # every worker bound (app loaded)
                    s.wait_ready(lambda s=s, n=workers: listening_sockets(s.port) >= n)
            # the Lua check must recognise each server's tool errors: try a missing todo
            for name in ("baseline", "ours"):
                missing = rpc_body("get_todo", {"todo_id": str(uuid.uuid4())})
                status, _, raw = post(servers[name].url, missing, token)
                detected = status >= 300 or looks_like_error(raw.decode(errors="replace"))
                validations[f"{name}/error-detection/w{workers}"] = detected
                if not detected:
                    raise RuntimeError(f"{name}: a tool error would not be counted: {raw[:300]!r}")
            # every worker must have seen its first request before timing: validate + warm up
            for scenario in args.scenarios:
                for name in ("baseline", "ours", "floor"):
                    if name == "floor" and scenario != args.scenarios[0]:
                        continue
                    validations[f"{name}/{scenario}/w{workers}"] = validate(
                        name, servers[name].url, scenario if name != "floor" else "get_todo", token
                    )
                    if args.warmup > 0:
                        run_wrk(
                            wrk,
                            servers[name].url,
                            token,
                            scenario if name != "floor" else "get_todo",
                            connections=max(args.connections),
                            threads=args.threads,
                            duration=args.warmup,
                            check=False,
                        )
            for conns in args.connections:
                for rep in range(args.reps):
                    analyze_tables()
                    order = ["baseline", "ours"] if rep % 2 == 0 else ["ours", "baseline"]
                    plan: list[tuple[str, str]] = [("floor", "get_todo")]
                    for scenario in args.scenarios:
                        plan += [(srv, scenario) for srv in order]
                    for srv, scenario in plan:
                        runs.append(
                            one_run(
                                args, wrk, servers[srv], srv, scenario, token, workers, conns, rep
                            )
                        )
                        time.sleep(args.pause)
            if profile_hook is not None and workers == 1:
                profile_hook(servers)
        finally:
            for s in servers.values():
                s.stop()
        result["load"]["summary"] = summarise_load(runs)


def one_run(
    args: argparse.Namespace,
    wrk: str,
    server: Server,
    srv: str,
    scenario: str,
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
        f"w{workers} c{conns} rep{rep} {srv:8s} {res['scenario']:12s} {res['rps']:9.1f}/s "
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
    body = scenario_bodies("get_todo")[0]
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
            server.wait_ready(lambda s=server: post(s.url, body, token, timeout=2)[0] > 0)
            run_wrk(wrk, server.url, token, "get_todo", connections=8, threads=1, duration=1)
            res = run_wrk(wrk, server.url, token, "get_todo", connections=8, threads=1, duration=2)
            out[label] = {k: res[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
            log(f"stack check, floor, {label}: {res['rps']:.0f}/s p50 {res['p50_ms']} ms")
        finally:
            server.stop()
    return out


# --- profile ---------------------------------------------------------------------------------


def profile_ours(
    args: argparse.Namespace,
    wrk: str,
    py_spy: str,
    server: Server,
    token: str,
    result: dict[str, Any],
) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    prof: dict[str, Any] = {
        "pid_tree": tree_pids(pid),
        "scenario": "get_todo",
        "connections": args.profile_connections,
        "workers": 1,
    }
    passes = [("gil", ["--gil"]), ("active", [])]
    if args.profile_svg:
        passes.append(("svg", ["--gil"]))
    for name, extra in passes:
        fmt = "flamegraph" if name == "svg" else "raw"
        out_path = RESULTS / ("profile-ours.svg" if name == "svg" else f"profile-ours-{name}.raw")
        wrk_proc = threading.Thread(
            target=lambda name=name: prof.setdefault("load", {}).__setitem__(
                name,
                run_wrk(
                    wrk,
                    server.url,
                    token,
                    "get_todo",
                    connections=args.profile_connections,
                    threads=args.threads,
                    duration=args.profile_duration + 3,
                    check=True,
                ),
            ),
            daemon=True,
        )
        wrk_proc.start()
        time.sleep(1.0)
        cmd = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(args.profile_duration),
            "--rate",
            "200",
            "--format",
            fmt,
            "--output",
            str(out_path),
            "--threads",
            *extra,
        ]
        try:
            run_checked(cmd, timeout=args.profile_duration + 60)
        except RuntimeError as exc:
            prof[f"{name}_error"] = str(exc)[-2000:]
            log(f"py-spy failed: {str(exc)[-500:]}")
        wrk_proc.join(timeout=args.profile_duration + 30)
        if fmt == "raw" and out_path.exists():
            stacks = profsum.parse(out_path.read_text().splitlines())
            prof[name] = profsum.summarise(stacks, top=30)
    text = []
    titles = {
        "gil": "ours under get_todo load (1 worker) — py-spy --gil: samples holding the GIL "
        "(where the CPU goes)",
        "active": "ours under get_todo load (1 worker) — py-spy without --gil: every non-idle "
        "thread (incl. waiting for the GIL)",
    }
    for name in ("gil", "active"):
        if name in prof:
            text.append(profsum.render(prof[name], titles[name]))
    if text:
        (RESULTS / "profile-ours.txt").write_text("\n\n".join(text))
    result["profile"] = prof


# --- output -----------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    summary = result.get("load", {}).get("summary", [])
    if summary:
        print()
        print(
            "Load (median of reps; rps = calls/s; p50/p99 in ms; err = non-2xx + JSON-RPC/tool "
            "errors + socket errors)"
        )
        hdr = (
            f"{'w':>1} {'c':>3} {'scenario':<12} | {'baseline rps':>12} {'p50':>6} {'p99':>6} "
            f"{'err':>3} | {'ours rps':>9} {'p50':>6} {'p99':>6} {'err':>3} "
            f"{'cpu/call':>8} | {'floor rps':>9} | {'ours/base':>9} {'ours/floor':>10}"
        )
        print(hdr)
        print("-" * len(hdr))
        for row in summary:
            b, o, f = row.get("baseline", {}), row.get("ours", {}), row.get("floor", {})
            print(
                f"{row['workers']:>1} {row['connections']:>3} {row['scenario']:<12} | "
                f"{b.get('rps', 0):>12.0f} {b.get('p50_ms', 0):>6.2f} {b.get('p99_ms', 0):>6.1f} "
                f"{b.get('errors', 0):>3} | "
                f"{o.get('rps', 0):>9.0f} {o.get('p50_ms', 0):>6.2f} {o.get('p99_ms', 0):>6.1f} "
                f"{o.get('errors', 0):>3} {o.get('server_cpu_ms_per_call', 0):>6.2f}ms | "
                f"{f.get('rps', 0):>9.0f} | "
                f"{row.get('ours_over_baseline_rps') or 0:>9.2f} "
                f"{row.get('ours_over_floor_rps') or 0:>10.3f}"
            )
        print()
        print(
            "Per call, ours (median): server CPU, PostgreSQL CPU, Redis CPU, wrk CPU (ms); new "
            "Redis connections and PostgreSQL sessions per call; CPU used by other processes (%)"
        )
        for row in summary:
            o = row.get("ours", {})
            if not o:
                continue
            print(
                f"  w{row['workers']} c{row['connections']:<3} {row['scenario']:<12} "
                f"server {o.get('server_cpu_ms_per_call', 0):5.2f}  "
                f"pg {o.get('postgres_cpu_ms_per_call', 0):5.2f}  "
                f"redis {o.get('redis_cpu_ms_per_call', 0):5.2f}  "
                f"wrk {o.get('wrk_cpu_ms_per_call', 0):5.2f}  "
                f"redis conns {o.get('redis_new_connections_per_call', 0):4.2f}  "
                f"pg sessions {o.get('pg_new_sessions_per_call', 0):4.2f}  "
                f"redis cmds {o.get('redis_commands_per_call', 0):4.2f}  "
                f"other procs {o.get('other_processes_cpu_pct', 0):4.1f}%  "
                f"rss {o.get('server_rss_mib', 0):6.1f} MiB  "
                f"audit rows ok {o.get('audit_rows_ok')}"
            )
    stack = result.get("stack_check")
    if stack:
        print()
        print("Stack check (floor, 2 workers, 8 connections): plain uvicorn CLI vs bench/serve.py")
        for label, r in stack.items():
            print(f"  {label:<28} {r['rps']:>9.0f}/s  p50 {r['p50_ms']:>7.2f} ms")
    micro = result.get("micro")
    if micro:
        print()
        print("Micro-figures (in-process, per call)")
        for label, m in micro.items():
            print(
                f"  {m['median_us']:>9.1f} µs median  {m['mean_us']:>9.1f} mean  "
                f"{m['p99_us']:>9.1f} p99   {label}"
            )
    trips = result.get("round_trips")
    if trips:
        print()
        print("Per call through config.asgi.application in process (sequential, no HTTP server)")
        for scenario, t in trips.items():
            print(
                f"  {scenario:<12} {t['in_process_ms_per_call']:6.2f} ms  "
                f"SQL {t['sql_per_call']:4.1f}  commits {t['commit_per_call']:3.1f}  "
                f"rollbacks {t['rollback_per_call']:3.1f}  Redis cmds {t['redis_per_call']:3.1f}  "
                f"sync_to_async {t['sync_to_async_per_call']:3.1f}  "
                f"to_thread {t['to_thread_per_call']:3.1f}  ok {t['ok']}"
            )
    audit = result.get("audit_scale")
    if audit:
        print()
        seed = audit.get("seed", {})
        print(
            f"Audit at scale: {seed.get('rows')} rows COPY in {seed.get('copy_s')} s "
            f"(+ANALYZE {seed.get('analyze_s')} s), {seed.get('table_mib_with_indexes')} MiB"
        )
        for a in audit.get("admin", []):
            print(
                f"  admin {a['page']:<40} {a['status']} first {a['first_ms']:>7.1f} ms  "
                f"median {a['median_ms']:>7.1f} ms  {a['queries']:>2} queries"
            )
        for e in audit.get("export", []):
            print(
                f"  audit_export --format {e['format']:<5} {e['wall_s']:>6.1f} s  "
                f"peak RSS {e['peak_rss_mib']:>6.1f} MiB  {e['output_mib']} MiB, {e['lines']} lines"
            )
        p = audit.get("prune")
        if p:
            print(
                f"  audit_prune --older-than {p['older_than']}: deleted {p['deleted']} of "
                f"{p['rows_before']} in {p['wall_s']} s (peak RSS {p['peak_rss_mib']} MiB)"
            )
    prof = result.get("profile", {}).get("gil")
    if prof:
        print()
        print("Profile (ours, get_todo, 1 worker, py-spy --gil): layers, exclusive")
        for label, _, pct in prof["buckets"][:12]:
            print(f"  {pct:5.1f}%  {label}")
        print(f"  full text: {RESULTS / 'profile-ours.txt'}")
    print()


def write_results(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = result["meta"]["started"].replace(":", "").replace("-", "")
    path = RESULTS / f"{stamp}.json"
    text = json.dumps(result, indent=2, default=str)
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    return path


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
        "--protocol-version",
        default="",
        help="send this MCP-Protocol-Version header on every call (default: none, as a "
        "handshake-era client)",
    )
    p.add_argument(
        "--no-stack-check",
        action="store_true",
        help="skip the floor run under plain `uvicorn --workers 2` (the Nagle check)",
    )
    p.add_argument("--keep-db", action="store_true", help="leave the mcp_bench database")
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
    args.workers = [int(w) for w in (args.workers or ("1" if q else "1,2")).split(",")]
    args.connections = [int(c) for c in (args.connections or ("8" if q else "8,32")).split(",")]
    if args.profile is None:
        args.profile = not q
    args.export_formats = [f for f in args.export_formats.split(",") if f]
    if args.audit_scale is None:
        args.audit_scale = not q
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    LAUNCH.update(plain=args.plain_uvicorn, loop=args.loop, http=args.http)
    HEADERS["protocol_version"] = args.protocol_version
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
        if not args.no_stack_check and not args.no_load:
            with phase("stack_check"):
                result["stack_check"] = stack_check(args, wrk, token)
        if not args.no_micro:
            with phase("micro"):
                result["micro"] = micro_figures(token, scale=0.3 if args.quick else 1.0)
                result["round_trips"] = round_trips(token)
        if not args.no_load:
            hook = None
            if args.profile:

                def hook(servers: dict[str, Server]) -> None:
                    with phase("profile"):
                        profile_ours(args, wrk, py_spy, servers["ours"], token, result)

            with phase("load"):
                run_load(args, wrk, issuer, env, ports, token, result, hook)
        if args.audit_scale:
            with phase("audit_scale"):
                audit: dict[str, Any] = {}
                result["audit_scale"] = audit
                log(f"seeding {args.audit_rows} audit rows with COPY")
                audit["seed"] = seed_audit_rows(args.audit_rows)
                log(f"seeded in {audit['seed']['copy_s']} s; timing the admin")
                audit["admin"] = time_admin(audit["seed"]["known"])
                log("timing audit_export")
                audit["export"] = time_export({**ORIG_ENV, **env}, args.export_formats)
                log("timing audit_prune")
                audit["prune"] = time_prune({**ORIG_ENV, **env}, args.audit_rows)
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
