"""``make bench``'s django-mcp-server server (dms): its pinned venv's requirements and stamp,
ours ÷ dms in the load summary, the run order and eras, and its command-line switches (no
servers, no venv: every bench run checks the server itself, ``bench/load.py``'s ``db_check``
and ``refused``).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.bench_runs import load_run

# --- the venv's pins ------------------------------------------------------------------------


def test_requirements_are_exact_pins_of_django_mcp_server_on_mcp_1(
    bench: dict[str, ModuleType],
) -> None:
    pins = bench["dms"].read_pins(bench["dms"].DMS_REQUIREMENTS.read_text())
    assert pins["django-mcp-server"] == "0.5.7"
    assert pins["mcp"].startswith("1.")  # 0.5.7 imports mcp.server.FastMCP, gone in mcp 2
    for dist in ("djangorestframework", "inflection", "uritemplate", "pyjwt", "psycopg-pool"):
        assert dist in pins, dist


@pytest.mark.parametrize(
    "dist", ["django", "uvicorn", "uvloop", "httptools", "psycopg", "psycopg-binary", "pyjwt"]
)
def test_shared_pins_are_the_projects_versions(bench: dict[str, ModuleType], dist: str) -> None:
    """Only django-mcp-server and what it needs differ from the project's stack."""
    pins = bench["dms"].read_pins(bench["dms"].DMS_REQUIREMENTS.read_text())
    assert pins[dist] == importlib.metadata.version(dist)


def test_read_pins_normalizes_names_and_skips_comments(bench: dict[str, ModuleType]) -> None:
    text = "# a comment\n\nDjango==5.2.19\npsycopg_binary==3.3.9  # trailing\nzope.interface==8.0\n"
    assert bench["dms"].read_pins(text) == {
        "django": "5.2.19",
        "psycopg-binary": "3.3.9",
        "zope-interface": "8.0",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mcp>=1.8\n", "not an exact pin"),
        ("mcp\n", "not an exact pin"),
        ("-r other.txt\n", "not an exact pin"),
        ("mcp==1.30.0 ; python_version < '4'\n", "not an exact pin"),
        ("Django==5.2.19\ndjango==5.2.18\n", "pinned twice"),
    ],
)
def test_read_pins_refuses_anything_but_exact_pins(
    bench: dict[str, ModuleType], text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        bench["dms"].read_pins(text)


def test_stamp_changes_with_the_requirements_and_python(bench: dict[str, ModuleType]) -> None:
    stamp = bench["dms"].venv_stamp
    assert stamp("mcp==1.30.0\n", "3.11.7") == stamp("mcp==1.30.0\n", "3.11.7")
    assert stamp("mcp==1.30.0\n", "3.11.7") != stamp("mcp==1.29.0\n", "3.11.7")
    assert stamp("mcp==1.30.0\n", "3.11.7") != stamp("mcp==1.30.0\n", "3.12.1")


def test_a_venv_with_a_matching_stamp_is_reused(
    bench: dict[str, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No venv, pip or network when the stamp matches; a stale stamp would rebuild."""
    import platform

    requirements = tmp_path / "req.txt"
    requirements.write_text("mcp==1.30.0\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    stamp = bench["dms"].venv_stamp(requirements.read_text(), platform.python_version())
    (venv / ".bench-stamp").write_text(stamp + "\n")
    calls: list[list[str]] = []
    monkeypatch.setattr(bench["dms"], "run_checked", lambda cmd, **kw: calls.append(cmd))
    assert bench["dms"].ensure_venv(venv, requirements) == str(venv / "bin" / "python")
    assert calls == []


# --- ours ÷ dms -----------------------------------------------------------------------------


def test_ours_over_dms_per_scenario(bench: dict[str, ModuleType]) -> None:
    runs = [
        load_run("floor", 0, 20000, 1.0, 0.03),
        load_run("dms", 0, 150, 180, 7.0),
        load_run("dms", 1, 160, 220, 7.2),
        load_run("ours", 0, 450, 60, 2.5),
        load_run("ours", 1, 480, 80, 2.7),
    ]
    (row,) = bench["summary"].summarise_load(runs)
    assert row["dms"]["rps"] == 155  # medians of the reps
    assert row["ours_over_dms_rps"] == pytest.approx(465 / 155, abs=1e-3)
    assert row["ours_over_dms_p99"] == pytest.approx(70 / 200, abs=0.01)
    assert row["ours_over_dms_cpu"] == pytest.approx(2.6 / 7.1, abs=0.01)


def test_no_dms_no_ratio(bench: dict[str, ModuleType]) -> None:
    """Without dms (--no-dms, or an era it does not speak) the row has no ours/dms keys."""
    (row,) = bench["summary"].summarise_load([load_run("ours", 0, 450, 60, 2.5)])
    assert "dms" not in row
    assert not any(key.startswith("ours_over_dms") for key in row)
    assert bench["summary"].over_dms({"rps": 1.0}, None) == {}


def test_dms_with_no_calls_has_no_ratio_rather_than_a_division_by_zero(
    bench: dict[str, ModuleType],
) -> None:
    ours = {"rps": 400.0, "p99_ms": 60.0, "server_cpu_ms_per_call": 2.5}
    dms = {"rps": 0.0, "p99_ms": 0.0, "server_cpu_ms_per_call": 0.0}
    assert bench["summary"].over_dms(ours, dms) == {
        "ours_over_dms_rps": None,
        "ours_over_dms_p99": None,
        "ours_over_dms_cpu": None,
    }


# --- order, eras, switches ------------------------------------------------------------------


def test_dms_runs_on_the_handshake_era_only(bench: dict[str, ModuleType]) -> None:
    load = bench["load"]
    assert load.served("dms", "handshake")
    assert not load.served("dms", "2026-07-28")
    assert all(load.served(s, "2026-07-28") for s in ("baseline", "fair", "ours", "floor"))


def test_fair_stays_next_to_ours_with_dms(bench: dict[str, ModuleType]) -> None:
    order = bench["load"].server_order
    assert order(0, True) == ["dms", "baseline", "fair", "ours"]
    assert order(1, True) == ["ours", "fair", "baseline", "dms"]
    assert order(0, False) == ["baseline", "fair", "ours"]
    for rep in range(4):
        o = order(rep, True)
        assert abs(o.index("fair") - o.index("ours")) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], True),
        (["--quick"], False),
        (["--quick", "--dms"], True),
        (["--no-dms"], False),
    ],
)
def test_dms_is_in_the_full_run_and_out_of_quick(
    bench: dict[str, ModuleType], argv: list[str], expected: bool
) -> None:
    assert bench["run"].parse_args(argv).dms is expected


def test_dms_environment_is_its_own(bench: dict[str, ModuleType]) -> None:
    base: dict[str, Any] = {"PATH": "/bin", "PYTHONPATH": "/work/main", "VIRTUAL_ENV": "/x"}
    quickstart = {"BENCH_JWKS_URL": "http://127.0.0.1:1/jwks.json", "BENCH_ISSUER": "i"}
    env = bench["dms"].dms_env(base, quickstart, 7)
    assert env["DJANGO_SETTINGS_MODULE"] == "dms_project.settings"
    assert env["BENCH_TENANT_PK"] == "7"
    assert env["DATABASE_URL"].startswith("postgres://")
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["BENCH_JWKS_URL"] == quickstart["BENCH_JWKS_URL"]
