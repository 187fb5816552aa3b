"""The dependency lock: uv.lock agrees with pyproject.toml, pins every package with hashes, the
bootstrap file agrees with the lock, and ``uv lock --check`` (what ``make test`` and so CI run
first) fails as soon as pyproject.toml changes without a new lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.servers import ROOT

PROJECT = "django-mcp-governed"


def load(name: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / name).read_text())


def lock_packages() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in load("uv.lock")["package"]}


def normalized(req: Requirement, extra: str | None = None) -> tuple[Any, ...]:
    marker = str(req.marker) if req.marker else ""
    if extra:
        marker = f"extra == '{extra}'"
    return canonicalize_name(req.name), tuple(sorted(req.extras)), str(req.specifier), marker


def locked(entry: dict[str, Any]) -> tuple[Any, ...]:
    spec = ",".join(sorted(entry.get("specifier", "").split(","))) if entry.get("specifier") else ""
    return (
        canonicalize_name(entry["name"]),
        tuple(sorted(entry.get("extras", []))),
        spec,
        entry.get("marker", ""),
    )


def sorted_spec(item: tuple[Any, ...]) -> tuple[Any, ...]:
    name, extras, spec, marker = item
    return name, extras, ",".join(sorted(spec.split(","))) if spec else "", marker


def test_lock_records_exactly_the_requirements_of_pyproject():
    project = load("pyproject.toml")["project"]
    wanted = {sorted_spec(normalized(Requirement(r))) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        wanted |= {sorted_spec(normalized(Requirement(r), extra)) for r in reqs}
    meta = lock_packages()[PROJECT]["metadata"]
    assert {locked(e) for e in meta["requires-dist"]} == wanted

    groups = load("pyproject.toml")["dependency-groups"]
    for group, reqs in groups.items():
        want = {sorted_spec(normalized(Requirement(r))) for r in reqs}
        assert {locked(e) for e in meta["requires-dev"][group]} == want


def test_every_locked_package_is_pinned_with_hashes():
    for name, package in lock_packages().items():
        if name == PROJECT:
            assert package["source"] == {"editable": "."}
            continue
        assert package["source"].get("registry") == "https://pypi.org/simple", name
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, f"{name} has no distribution"
        for file in files:
            assert file["hash"].startswith("sha256:") and len(file["hash"]) == 71, (name, file)


def test_bootstrap_file_pins_the_locked_installer():
    packages = lock_packages()
    text = (ROOT / "requirements-uv.txt").read_text()
    pins = dict(line.split(" ", 1)[0].split("==") for line in text.splitlines() if "==" in line)
    assert set(pins) == {"pip", "uv"}
    for name, version in pins.items():
        package = packages[name]
        assert package["version"] == version
        hashes = {f["hash"] for f in [*package.get("wheels", []), package.get("sdist", {})] if f}
        listed = {
            part.split("=", 1)[1] for part in text.split() if part.startswith("--hash=sha256:")
        }
        assert hashes & listed, name


def uv() -> Path:
    path = Path(sys.executable).parent / "uv"
    if not path.exists():
        found = shutil.which("uv")
        if found is None:
            pytest.skip("uv is not installed in this environment (make install puts it there)")
        path = Path(found)
    return path


def uv_lock_check(project_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(uv()), "lock", "--check", "--offline", "--project", str(project_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        # offline: the cache `make install` filled is enough to re-check a lock
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        check=False,
    )


def test_uv_lock_check_passes_and_catches_a_changed_pyproject(tmp_path):
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    ok = uv_lock_check(tmp_path)
    assert ok.returncode == 0, ok.stderr

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('"django>=5.2,<5.3"', '"django>=5.2.1,<5.3"')
    )
    stale = uv_lock_check(tmp_path)
    assert stale.returncode != 0
    # With uv's index cache warm, uv re-resolves and reports the stale lock; on a fresh machine
    # (only the wheels `make install` fetched are cached) the offline re-resolution itself fails.
    # Either way the check refuses the changed pyproject.toml, which is what CI relies on.
    assert "needs to be updated" in stale.stderr or "network was disabled" in stale.stderr, (
        stale.stderr
    )
    assert (tmp_path / "uv.lock").read_bytes() == (ROOT / "uv.lock").read_bytes()  # untouched
