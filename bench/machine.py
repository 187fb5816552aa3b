"""Facts about the machine and CPU accounting per process tree."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from common import PG_ADMIN_URL, REDIS_URL, RESULTS, ROOT


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
