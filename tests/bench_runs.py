"""Load runs as ``bench/load.py``'s ``one_run`` records them, for the bench summary's tests."""

from __future__ import annotations

from typing import Any


def load_run(
    server: str, rep: int, rps: float, p99: float, cpu: float, pg: float = 0.3
) -> dict[str, Any]:
    """One handshake-era ``get_todo`` run (the floor's own scenario for ``floor``), 1 worker,
    8 connections; p50 is a quarter of p99; ours alone pays Redis CPU."""
    return {
        "era": "handshake",
        "workers": 1,
        "connections": 8,
        "scenario": "get_todo" if server != "floor" else "floor",
        "server": server,
        "rep": rep,
        "rps": rps,
        "p50_ms": p99 / 4,
        "p99_ms": p99,
        "errors": 0,
        "requests": int(rps * 3),
        "server_cpu_ms_per_call": cpu,
        "postgres_cpu_ms_per_call": pg,
        "redis_cpu_ms_per_call": 0.05 if server == "ours" else 0.0,
    }
