"""The load phase's summary: medians per (era, workers, connections, scenario, server), the
ratios against the seed baseline and the floor, and the governance tax against the fair server.

**Governance tax** (per era, workers, connections and scenario): ours - fair, in server CPU ms
per call (``tax_cpu_ms_per_call``: the median of ours' runs minus the median of fair's; both do
the same database work for the tool itself, so what is left is what governance adds in the
server process), and the same for PostgreSQL + Redis CPU (``tax_backend_cpu_ms_per_call``: the
audit row, the rate limit, the tenant switch). ``ours_over_fair_rps`` and
``ours_over_fair_p99`` put it in calls/s and tail latency (issue 20's target: p99 no worse than
1.2x fair's).

**Against django-mcp-server** (``dms``, same table, same database work): ours ÷ dms in calls/s
(``ours_over_dms_rps``; issue 20's target: >= 3 at 2 workers on ``get_todo`` and
``create_todo``), in p99 latency (``ours_over_dms_p99``) and in server CPU per call
(``ours_over_dms_cpu``); below 1 is better for the last two.
"""

from __future__ import annotations

import statistics
from typing import Any

from common import SCENARIOS, SERVERS
from protocol import ERAS


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


def _ratio(a: float, b: float, digits: int = 3) -> float | None:
    return round(a / b, digits) if b else None


def summarise_load(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, int, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        key = (r["era"], r["workers"], r["connections"], r["scenario"], r["server"])
        groups.setdefault(key, []).append(r)
    summary: list[dict[str, Any]] = []
    eras = list(ERAS)
    keys = sorted(
        {(e, w, c, s) for (e, w, c, s, srv) in groups if srv != "floor"},
        key=lambda k: (eras.index(k[0]), k[1], k[2], SCENARIOS.index(k[3])),
    )
    for e, w, c, s in keys:
        row: dict[str, Any] = {"era": e, "workers": w, "connections": c, "scenario": s}
        for srv in SERVERS:
            rs = groups.get((e, w, c, s if srv != "floor" else "floor", srv), [])
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
            for name in PER_RUN_MEDIANS:
                row[srv][name] = median([r.get(name, 0) for r in rs])
            if srv == "ours":
                row[srv]["audit_rows_ok"] = all(r.get("audit_ok", True) for r in rs)
        b, o, f = row.get("baseline"), row.get("ours"), row.get("floor")
        fair = row.get("fair")
        if b and o and b["rps"]:
            row["ours_over_baseline_rps"] = round(o["rps"] / b["rps"], 3)
            row["ours_over_baseline_p50"] = _ratio(o["p50_ms"], b["p50_ms"], 2)
        if f and o and f["rps"]:
            row["ours_over_floor_rps"] = round(o["rps"] / f["rps"], 3)
        if f and b and f["rps"]:
            row["baseline_over_floor_rps"] = round(b["rps"] / f["rps"], 3)
        if fair and o:
            row["ours_over_fair_rps"] = _ratio(o["rps"], fair["rps"])
            row["ours_over_fair_p99"] = _ratio(o["p99_ms"], fair["p99_ms"], 2)
            row["tax_cpu_ms_per_call"] = round(
                o["server_cpu_ms_per_call"] - fair["server_cpu_ms_per_call"], 3
            )
            backend = ("postgres_cpu_ms_per_call", "redis_cpu_ms_per_call")
            row["tax_backend_cpu_ms_per_call"] = round(
                sum(o[k] for k in backend) - sum(fair[k] for k in backend), 3
            )
        row.update(over_dms(o, row.get("dms")))
        summary.append(row)
    return summary


def over_dms(ours: dict[str, Any] | None, dms: dict[str, Any] | None) -> dict[str, float | None]:
    """Ours ÷ dms (django-mcp-server) in calls/s, p99 and server CPU per call."""
    if not ours or not dms:
        return {}
    return {
        "ours_over_dms_rps": _ratio(ours["rps"], dms["rps"]),
        "ours_over_dms_p99": _ratio(ours["p99_ms"], dms["p99_ms"], 2),
        "ours_over_dms_cpu": _ratio(
            ours["server_cpu_ms_per_call"], dms["server_cpu_ms_per_call"], 2
        ),
    }
