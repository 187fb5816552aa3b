"""The printed table and the JSON results file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import RESULTS

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
            f"{'era':<10} {'w':>1} {'c':>3} {'scenario':<12} | "
            f"{'baseline rps':>12} {'p50':>6} {'p99':>6} "
            f"{'err':>3} | {'ours rps':>9} {'p50':>6} {'p99':>6} {'err':>3} "
            f"{'cpu/call':>8} | {'floor rps':>9} | {'ours/base':>9} {'ours/floor':>10}"
        )
        print(hdr)
        print("-" * len(hdr))
        for row in summary:
            b, o, f = row.get("baseline", {}), row.get("ours", {}), row.get("floor", {})
            print(
                f"{row['era']:<10} {row['workers']:>1} {row['connections']:>3} "
                f"{row['scenario']:<12} | "
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
            "Governance tax: ours - fair (plain FastMCP, same services and database), server "
            "CPU ms per call (median of reps); backend = PostgreSQL + Redis CPU; "
            "p99 target <= 1.2x fair"
        )
        hdr = (
            f"{'era':<10} {'w':>1} {'c':>3} {'scenario':<12} | "
            f"{'fair rps':>8} {'p50':>6} {'p99':>6} {'err':>3} {'cpu/call':>8} | "
            f"{'ours cpu':>8} | {'tax cpu':>8} {'backend':>8} | "
            f"{'ours/fair rps':>13} {'p99':>5} | {'ours/base':>9}"
        )
        print(hdr)
        print("-" * len(hdr))
        for row in summary:
            fair, o = row.get("fair", {}), row.get("ours", {})
            if not fair:
                continue
            print(
                f"{row['era']:<10} {row['workers']:>1} {row['connections']:>3} "
                f"{row['scenario']:<12} | "
                f"{fair.get('rps', 0):>8.0f} {fair.get('p50_ms', 0):>6.2f} "
                f"{fair.get('p99_ms', 0):>6.1f} {fair.get('errors', 0):>3} "
                f"{fair.get('server_cpu_ms_per_call', 0):>6.2f}ms | "
                f"{o.get('server_cpu_ms_per_call', 0):>6.2f}ms | "
                f"{row.get('tax_cpu_ms_per_call') or 0:>+6.2f}ms "
                f"{row.get('tax_backend_cpu_ms_per_call') or 0:>+6.2f}ms | "
                f"{row.get('ours_over_fair_rps') or 0:>13.2f} "
                f"{row.get('ours_over_fair_p99') or 0:>5.2f} | "
                f"{row.get('ours_over_baseline_rps') or 0:>9.2f}"
            )
        print_dms(summary)
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
                f"  {row['era']:<10} w{row['workers']} c{row['connections']:<3} "
                f"{row['scenario']:<12} "
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
    instr = result.get("instructions")
    if instr:
        print()
        print(
            f"Instructions per call (cachegrind, in process, (I(N2) - I(N1)) / (N2 - N1), "
            f"N = {instr['calls'][0]}, {instr['calls'][1]}): ours, fair, tax = ours - fair"
        )
        for era, scenarios in instr.get("tax", {}).items():
            for scenario, tax in scenarios.items():
                ours = instr["ours"][era][scenario]["instructions_per_call"]
                fair = instr["fair"][era][scenario]["instructions_per_call"]
                print(
                    f"  {era:<10} {scenario:<12} ours {ours:>12,}  fair {fair:>12,}  "
                    f"tax {tax:>12,}  ({ours / fair:.2f}x)"
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
        for era, scenarios in trips.items():
            for scenario, t in scenarios.items():
                print(
                    f"  {era:<10} {scenario:<18} {t['in_process_ms_per_call']:6.2f} ms  "
                    f"SQL {t['sql_per_call']:4.1f}  commits {t['commit_per_call']:3.1f}  "
                    f"rollbacks {t['rollback_per_call']:3.1f}  "
                    f"Redis cmds {t['redis_per_call']:3.1f}  "
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
        for o in audit.get("overview", []):
            print(
                f"  {o['page']:<30} ({o['state']:<8}) {o['status']} "
                f"first {o['first_ms']:>7.1f} ms  median {o['median_ms']:>7.1f} ms  "
                f"{o['queries']:>2} queries"
            )
        sealing = audit.get("sealing")
        if sealing:
            s, v = sealing["seal"], sealing["verify"]
            print(
                f"  audit_seal: {s['rows_sealed']} rows in {s['seals']} seals, {s['wall_s']} s "
                f"({s['rows_per_s']} rows/s, peak RSS {s['peak_rss_mib']} MiB; seal table "
                f"{s['seal_table_mib']} MiB, rollup {s['rollup_rows']} rows)"
            )
            print(
                f"  audit_verify: {v['rows']} rows in {v['wall_s']} s ({v['rows_per_s']} rows/s, "
                f"peak RSS {v['peak_rss_mib']} MiB)"
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


def print_dms(summary: list[dict[str, Any]]) -> None:
    """Ours against django-mcp-server, where dms ran (the handshake era)."""
    rows = [row for row in summary if row.get("dms")]
    if not rows:
        return
    print()
    print(
        "django-mcp-server (dms, same tools and database work): ours / dms in calls/s, p99 and "
        "server CPU per call; target: ours/dms rps >= 3 at 2 workers on get_todo, create_todo"
    )
    hdr = (
        f"{'era':<10} {'w':>1} {'c':>3} {'scenario':<12} | "
        f"{'dms rps':>8} {'p50':>6} {'p99':>6} {'err':>3} {'cpu/call':>8} | "
        f"{'ours rps':>8} {'p99':>6} {'cpu/call':>8} | {'ours/dms rps':>12} {'p99':>5} {'cpu':>5}"
    )
    print(hdr)
    print("-" * len(hdr))
    for row in rows:
        d, o = row["dms"], row.get("ours", {})
        print(
            f"{row['era']:<10} {row['workers']:>1} {row['connections']:>3} "
            f"{row['scenario']:<12} | "
            f"{d['rps']:>8.0f} {d['p50_ms']:>6.2f} {d['p99_ms']:>6.1f} {d['errors']:>3} "
            f"{d['server_cpu_ms_per_call']:>6.2f}ms | "
            f"{o.get('rps', 0):>8.0f} {o.get('p99_ms', 0):>6.1f} "
            f"{o.get('server_cpu_ms_per_call', 0):>6.2f}ms | "
            f"{row.get('ours_over_dms_rps') or 0:>12.2f} "
            f"{row.get('ours_over_dms_p99') or 0:>5.2f} {row.get('ours_over_dms_cpu') or 0:>5.2f}"
        )


def write_results(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = result["meta"]["started"].replace(":", "").replace("-", "")
    path = RESULTS / f"{stamp}.json"
    text = json.dumps(result, indent=2, default=str)
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    return path
