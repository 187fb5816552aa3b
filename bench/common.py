"""Shared constants, logging, child processes, tools and server launch for ``make bench``."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PY = sys.executable
VENV_BIN = Path(sys.executable).parent
LUA = BENCH / "mcp.lua"

sys.path.insert(0, str(BENCH))

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: BENCH_DB_NAME / BENCH_REDIS_DB let two checkouts bench side by side without sharing state.
DB_NAME = os.environ.get("BENCH_DB_NAME", "mcp_bench")
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('BENCH_REDIS_DB', '11')}"

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
SERVERS = ("baseline", "fair", "dms", "ours", "floor")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- child processes ------------------------------------------------------------------------


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
    app: str,
    port: int,
    workers: int,
    app_dir: str | None = None,
    plain: bool | None = None,
    python: str = PY,
) -> list[str]:
    """``uvicorn APP --workers N`` via bench/serve.py (TCP_NODELAY; see there) or the CLI, run
    by ``python`` (the project's, or another venv's with uvicorn, e.g. django-mcp-server's)."""
    if plain if plain is not None else LAUNCH["plain"]:
        cmd = [python, "-m", "uvicorn", app, "--no-access-log"]
    else:
        cmd = [python, str(BENCH / "serve.py"), app]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cmd += ["--log-level", "warning", "--loop", LAUNCH["loop"], "--http", LAUNCH["http"]]
    if app_dir:
        cmd += ["--app-dir", app_dir]
    return cmd
