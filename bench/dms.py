"""django-mcp-server ("dms") in ``make bench``: its own venv, its environment, the eras it speaks.

django-mcp-server 0.5.7 imports mcp 1.x's ``FastMCP``; the project runs mcp 2.x. So the dms
server (``bench/dms_project``) runs in a venv of its own, ``bench/.venv-dms`` (git-ignored),
created with ``python -m venv`` and ``pip install -r bench/dms-requirements.txt`` (exact pins
only), and reused while its stamp (a hash of that file and the Python version) matches. The
project's own dependencies and lock are not touched.

mcp 1.30 speaks protocol versions up to 2025-11-25: dms answers the handshake era (plain
JSON-RPC with ``MCP-Protocol-Version: 2025-11-25``, no ``initialize`` needed by its stateless
server) and refuses 2026-07-28 requests with HTTP 400, so it is loaded on the handshake era
only (``DMS_ERAS``); the bench checks the refusal every run.
"""

from __future__ import annotations

import hashlib
import platform
import re
from pathlib import Path

from common import BENCH, DATABASE_URL, PY, log, run_checked

DMS_VENV = BENCH / ".venv-dms"
DMS_REQUIREMENTS = BENCH / "dms-requirements.txt"
#: The app, for bench/serve.py with ``--app-dir bench``.
DMS_APP = "dms_project.asgi:application"
#: The eras dms is loaded on (see the module's docstring).
DMS_ERAS = ("handshake",)
#: The pins reported with the results.
REPORTED = (
    "django-mcp-server",
    "mcp",
    "django",
    "djangorestframework",
    "uvicorn",
    "psycopg",
    "psycopg-pool",
)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
    """``{normalized name: version}`` of a requirements file of exact pins (``name==version``
    per line; comments and blank lines allowed); anything else is an error."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"line {number}: {raw.strip()!r} is not an exact pin (name==version)")
        name = normalize(match.group(1))
        if name in pins:
            raise ValueError(f"line {number}: {match.group(1)} is pinned twice")
        pins[name] = match.group(2)
    return pins


def venv_stamp(requirements: str, python_version: str) -> str:
    """What a usable venv was built from: the requirements' text and the Python version."""
    digest = hashlib.sha256(f"{python_version}\n{requirements}".encode()).hexdigest()
    return f"python {python_version} requirements sha256 {digest}"


def ensure_venv(venv: Path = DMS_VENV, requirements: Path = DMS_REQUIREMENTS) -> str:
    """The dms venv's python: reused if its stamp matches, else (re)created and checked."""
    text = requirements.read_text()
    pins = read_pins(text)
    python = venv / "bin" / "python"
    stamp_file = venv / ".bench-stamp"
    stamp = venv_stamp(text, platform.python_version())
    if python.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return str(python)
    log(f"creating {venv} (django-mcp-server's venv) from {requirements.name}")
    run_checked([PY, "-m", "venv", "--clear", str(venv)], timeout=300)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    run_checked([*pip, "install", "--quiet", "-r", str(requirements)], timeout=900)
    frozen = read_pins(run_checked([*pip, "freeze", "--exclude", "pip"]).stdout)
    wrong = {n: (v, frozen.get(n)) for n, v in pins.items() if frozen.get(n) != v}
    if wrong:
        raise RuntimeError(f"{venv}: installed versions differ from the pins: {wrong}")
    stamp_file.write_text(stamp + "\n")
    return str(python)


def reported_pins(requirements: Path = DMS_REQUIREMENTS) -> dict[str, str]:
    pins = read_pins(requirements.read_text())
    return {name: pins[name] for name in REPORTED if name in pins}


def dms_env(base_env: dict[str, str], quickstart: dict[str, str], tenant_pk: int) -> dict[str, str]:
    """The dms server's environment: the bench database, issuer and tenant; nothing of the
    project's Django settings (its own are ``dms_project.settings``)."""
    env = {k: v for k, v in base_env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {
        **env,
        **quickstart,
        "DJANGO_SETTINGS_MODULE": "dms_project.settings",
        "DATABASE_URL": DATABASE_URL,
        "BENCH_TENANT_PK": str(tenant_pk),
    }
