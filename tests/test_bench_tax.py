"""``make bench``'s governance tax: the summary against the fair server, the instruction counts
read from cachegrind's files, and the command line of the new phase (no servers, no valgrind).

The fair server itself is checked by every bench run (``bench/load.py``'s ``db_check``:
it reads a seeded todo and inserts one row, counted before and after).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench_runs import load_run

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_tax_is_ours_minus_fair_per_scenario(bench: dict[str, ModuleType]) -> None:
    runs = [
        load_run("floor", 0, 20000, 1.0, 0.03, 0.0),
        load_run("baseline", 0, 700, 60, 1.4, 0.0),
        load_run("fair", 0, 500, 80, 1.7, 0.30),
        load_run("fair", 1, 520, 90, 1.9, 0.34),
        load_run("ours", 0, 400, 100, 2.3, 0.50),
        load_run("ours", 1, 420, 110, 2.5, 0.56),
    ]
    (row,) = bench["summary"].summarise_load(runs)
    assert row["fair"]["server_cpu_ms_per_call"] == 1.8  # medians of the reps
    assert row["ours"]["server_cpu_ms_per_call"] == 2.4
    assert row["tax_cpu_ms_per_call"] == pytest.approx(0.6)
    # PostgreSQL 0.53 + Redis 0.05 against PostgreSQL 0.32
    assert row["tax_backend_cpu_ms_per_call"] == pytest.approx(0.26)
    assert row["ours_over_fair_rps"] == pytest.approx(410 / 510, abs=1e-3)
    assert row["ours_over_fair_p99"] == pytest.approx(105 / 85, abs=0.01)
    assert row["ours_over_baseline_rps"] == pytest.approx(410 / 700, abs=1e-3)


def test_no_fair_runs_no_tax(bench: dict[str, ModuleType]) -> None:
    runs = [load_run("baseline", 0, 700, 60, 1.4, 0.0), load_run("ours", 0, 400, 100, 2.3, 0.5)]
    (row,) = bench["summary"].summarise_load(runs)
    assert "tax_cpu_ms_per_call" not in row
    assert "ours_over_baseline_rps" in row


def _cachegrind_dir(tmp_path: Path, totals: dict[int, tuple[int, int]]) -> Path:
    """A manifest and one cachegrind file per child: {pid: (calls, instructions)}."""
    manifest = []
    for pid, (calls, instructions) in totals.items():
        manifest.append(
            {
                "era": "2026-07-28",
                "scenario": "create_todo",
                "calls": calls,
                "pid": pid,
                "exit": 0,
                "error": "",
            }
        )
        (tmp_path / f"cachegrind.out.{pid}").write_text(
            f"desc: --cache-sim=no\ncmd: python\nevents: Ir\nfl=x.c\nfn=f\n1 5\n"
            f"summary: {instructions}\n"
        )
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_instructions_per_call_is_the_difference_of_two_children(
    bench: dict[str, ModuleType], tmp_path: Path
) -> None:
    out = _cachegrind_dir(tmp_path, {101: (10, 21_000_000_000), 102: (40, 21_150_000_000)})
    counts = bench["instructions"].collect("ours", out, (10, 40))
    assert counts["2026-07-28"]["create_todo"]["instructions_per_call"] == 5_000_000
    assert counts["2026-07-28"]["create_todo"]["instructions"] == [21_000_000_000, 21_150_000_000]


def test_a_failed_child_fails_the_count(bench: dict[str, ModuleType], tmp_path: Path) -> None:
    out = _cachegrind_dir(tmp_path, {101: (10, 1), 102: (40, 2)})
    manifest = json.loads((out / "manifest.json").read_text())
    manifest[1].update(exit=1, error="RuntimeError: call 3: HTTP 401")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="HTTP 401"):
        bench["instructions"].collect("fair", out, (10, 40))


def test_instruction_phase_arguments(bench: dict[str, ModuleType]) -> None:
    parse = bench["run"].parse_args
    full = parse([])
    assert full.instructions and full.instr_calls == (10, 40) and full.instr_warmup == 10
    quick = parse(["--quick"])
    assert quick.instructions and quick.instr_calls == (5, 20) and quick.instr_warmup == 5
    only = parse(["--instructions-only"])
    assert only.instructions and only.no_load and only.no_micro and only.no_stack_check
    assert not only.profile and not only.audit_scale
    assert not parse(["--no-instructions"]).instructions
    with pytest.raises(SystemExit):
        parse(["--instr-calls", "40,10"])
    with pytest.raises(SystemExit):
        parse(["--instructions-only", "--no-instructions"])


def test_run_help_lists_the_new_phase() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "--instructions-only" in proc.stdout and "--no-instructions" in proc.stdout


def test_attribution_stand_ins_are_undone(bench: dict[str, ModuleType]) -> None:
    """``bench/attribution.py``'s diagnostic variants skip a round trip only inside their
    block: the recorder, the counting cache and FastMCP's telemetry are restored exactly."""
    import asyncio
    import inspect

    import fastmcp

    import audit.recorder
    from mcpauth.admission.cache import RedisCache

    patched = bench["attribution"]._patched
    insert = audit.recorder._insert
    acount = inspect.getattr_static(RedisCache, "acount")
    mode = fastmcp.settings.telemetry_mode
    with patched("ours"):
        assert audit.recorder._insert is insert
        assert inspect.getattr_static(RedisCache, "acount") is acount
    with patched("ours, neither sent"):
        assert audit.recorder._insert is not insert
        assert asyncio.run(RedisCache.acount(None, "key", 60)) == (1, 1)  # type: ignore[arg-type]
    assert audit.recorder._insert is insert
    assert inspect.getattr_static(RedisCache, "acount") is acount
    with patched("fair"):
        assert fastmcp.settings.telemetry_mode == "native"
    assert fastmcp.settings.telemetry_mode == mode


def test_attribution_stand_ins_take_what_they_stand_in_for(bench: dict[str, ModuleType]) -> None:
    """Each stand-in accepts the arguments of the function it replaces: a stand-in that raises
    makes its variant's calls fail, and a failing call costs less than a real one."""
    import inspect

    import audit.recorder
    from mcpauth.admission.cache import RedisCache
    from mcpauth.admission.leases import Leases

    real = {
        (audit.recorder, "_insert"): audit.recorder._insert,
        (audit.recorder, "_ends_transaction"): audit.recorder._ends_transaction,
        (RedisCache, "acount"): inspect.getattr_static(RedisCache, "acount"),
        (Leases, "size"): inspect.getattr_static(Leases, "size"),
    }
    seen = set()
    for variant in bench["attribution"].VARIANTS:
        with bench["attribution"]._patched(variant):
            for (owner, name), function in real.items():
                standin = inspect.getattr_static(owner, name)
                if standin is function:
                    continue
                seen.add(name)
                params = inspect.signature(function).parameters
                inspect.signature(standin).bind(
                    *[None] * sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values()),
                    **{n: None for n, p in params.items() if p.kind is p.KEYWORD_ONLY},
                )
    assert seen == {name for _, name in real}
