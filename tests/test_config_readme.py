"""The README's commands, run as written, from a copy of the checkout.

A fenced block preceded by an HTML comment is run, in the README's order, as one shell session
(each block sees the variables the ones before exported, such as ``TOKEN``):

* ``<!-- run -->`` before a ``sh`` block: run with ``bash -euo pipefail``; before a ``python``
  block: written to a file and run with ``.venv/bin/python`` (the snippets read ``TOKEN``);
* ``<!-- run: background -->``: a long-running command (``make run``), started, waited for
  until ``/health`` answers, and stopped before the next one starts and at the end;
* ``<!-- run: file -->``: a ``python`` block whose first line is ``# <path>`` is that file
  (``# <path>, continued`` appends to it).

The copy is the checkout's files (tracked and new, none ignored), with the checkout's ``.venv``
linked in, so ``make`` finds the installation up to date and nothing is fetched. The session's
environment is a shell's (no ``DATABASE_URL``, ``REDIS_URL`` or Django settings from this test
run), with ``PORT`` set to a free port and ``BASE_URL`` to its URL, as the README says for a
port other than 8000; ``127.0.0.1:8000`` in a block becomes that port. Blocks
without a marker (``make test``, interactive ones, other machines' commands) are not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.servers import ROOT, serving

pytestmark = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="the README's quickstart runs on SQLite: CI runs this in its SQLite pass",
)

MARKED = re.compile(
    r"<!-- run(?::\s*(?P<mode>[a-z]+))? -->\n```(?P<lang>\w+)\n(?P<body>.*?)```", re.DOTALL
)
TIMEOUT = 120


@dataclass
class Block:
    mode: str
    lang: str
    body: str
    line: int


def blocks(text: str) -> list[Block]:
    return [
        Block(
            m.group("mode") or "run",
            m.group("lang"),
            m.group("body"),
            text[: m.start()].count("\n") + 1,
        )
        for m in MARKED.finditer(text)
    ]


def copy_checkout(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:  # not a git checkout: everything but the installation and local state
        skip = {".venv", "node_modules", "var", ".git", "__pycache__"}
        names = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    for name in names:
        source = ROOT / name
        if not source.is_file():  # listed but deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)  # mtimes kept: make sees the installation up to date
    (dest / ".venv").symlink_to(ROOT / ".venv")


class Session:
    """One shell session in ``clone``: exported variables carry over from block to block."""

    def __init__(self, clone: Path, port: int) -> None:
        self.clone = clone
        self.port = port
        self.state = clone.parent / "session.env"
        self.state.write_text("")
        keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        # the port the README's commands would use (8000), told to make and to mint_token alike,
        # as the README says for another port
        base = f"http://127.0.0.1:{port}"
        self.env = {**keep, "PORT": str(port), "BASE_URL": base, "PYTHONUNBUFFERED": "1"}
        self.background: subprocess.Popen[bytes] | None = None
        self.outputs: list[str] = []

    def text(self, block: Block) -> str:
        return block.body.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def script(self, body: str) -> str:
        return f"set -euo pipefail\nsource {self.state}\n{body}\nexport -p > {self.state}\n"

    def run(self, block: Block, index: int) -> None:
        body = self.text(block)
        if block.lang == "python":
            snippet = self.clone.parent / f"snippet_{index}.py"
            snippet.write_text(body)
            body = f".venv/bin/python {snippet}"
        proc = subprocess.run(
            ["bash", "-c", self.script(body)],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        self.outputs.append(proc.stdout)
        assert proc.returncode == 0, (
            f"README line {block.line} failed ({proc.returncode}):\n{body}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )

    def start(self, block: Block, index: int) -> None:
        self.stop()
        log = (self.clone.parent / f"background_{index}.log").open("w+b")
        self.background = subprocess.Popen(
            ["bash", "-c", self.script(self.text(block))],
            cwd=self.clone,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server it starts, stopped together
        )
        self._serving = serving(
            self.background, f"http://127.0.0.1:{self.port}", log, what="README", seconds=90
        )
        self._serving.__enter__()

    def write(self, block: Block) -> None:
        first, _, rest = block.body.partition("\n")
        match = re.fullmatch(r"# (\S+?)(, continued)?", first.strip())
        assert match, f"README line {block.line}: a file block starts with '# <path>'"
        path = self.clone / match.group(1)
        if match.group(2):
            path.write_text(path.read_text() + "\n\n" + rest)
        else:
            path.write_text(rest)

    def stop(self) -> None:
        """Stop make and the server it started, and wait until the port is free again (the
        next server's health check must not be answered by this one)."""
        if self.background is None:
            return
        group = self.background.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        self._serving.__exit__(None, None, None)
        self.background = None
        started = time.monotonic()
        while port_open(self.port):
            waited = time.monotonic() - started
            assert waited < 60, f"port {self.port} still served after stopping make run"
            if waited > 30:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            time.sleep(0.2)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_readme_marks_the_commands_it_runs() -> None:
    found = blocks((ROOT / "README.md").read_text())
    modes = [b.mode for b in found]
    assert modes.count("background") >= 2 and modes.count("file") == 3
    assert sum(b.lang == "python" and b.mode == "run" for b in found) == 2  # both clients
    assert all(b.lang in ("sh", "python") for b in found)


def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    copy_checkout(clone)
    session = Session(clone, free_port())
    try:
        for index, block in enumerate(blocks((ROOT / "README.md").read_text())):
            if block.mode == "background":
                session.start(block, index)
            elif block.mode == "file":
                session.write(block)
            else:
                session.run(block, index)
    finally:
        session.stop()

    # what the commands claim to do, they did: one audit row per call, each one "ok"
    with sqlite3.connect(clone / "var" / "db.sqlite3") as db:
        calls = db.execute(
            "SELECT tool, outcome, tenant FROM audit_auditevent WHERE method = 'tools/call' "
            "ORDER BY id"
        ).fetchall()
    assert calls == [
        ("create_todo", "ok", "acme"),  # curl
        ("create_todo", "ok", "acme"),  # fastmcp.Client
        ("list_todos", "ok", "acme"),  # the mcp SDK
        ("add_note", "ok", "acme"),  # the new app's tool
    ]
    assert "Ship it" in "".join(session.outputs) and "feed the cat" in "".join(session.outputs)

    # and the suite still runs with the new app next to tests/notes (the same label)
    suite = subprocess.run(
        [
            *(".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("tests/test_mcpauth_platform.py", "-k", "readme_example_tools_work"),
        ],
        cwd=clone,
        env=session.env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert suite.returncode == 0 and "2 passed" in suite.stdout, suite.stdout + suite.stderr
