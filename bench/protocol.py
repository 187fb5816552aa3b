"""JSON-RPC request bodies per scenario and protocol era, and one-off requests."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from common import SEED_IDS

# --- protocol eras -------------------------------------------------------------------------


@dataclass(frozen=True)
class Era:
    """How a client of one protocol era frames a ``tools/call``.

    * ``handshake``: what the ``mcp`` SDK sends after its ``initialize`` handshake: the body is
      plain JSON-RPC and ``MCP-Protocol-Version: 2025-11-25`` rides every POST.
    * ``2026-07-28``: what ``fastmcp.Client`` sends by default today: no handshake, and every
      request carries ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` headers and the
      ``params._meta`` envelope (protocol version, client capabilities, client info).
    """

    name: str
    version: str

    @property
    def modern(self) -> bool:
        return self.version == "2026-07-28"

    def body(self, tool: str, arguments: dict[str, Any]) -> str:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if self.modern:
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": self.version,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
            }
        return json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params},
            separators=(",", ":"),
        )

    def headers(self, tool: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": self.version,
        }
        if self.modern:
            headers |= {"Mcp-Method": "tools/call", "Mcp-Name": tool}
        return headers


ERAS: dict[str, Era] = {
    "handshake": Era("handshake", "2025-11-25"),
    "2026-07-28": Era("2026-07-28", "2026-07-28"),
}


def scenario_calls(scenario: str) -> tuple[str, list[dict[str, Any]]]:
    """``(tool, [arguments, ...])`` for a scenario; each connection cycles through them."""
    if scenario == "get_todo":
        return "get_todo", [{"todo_id": i} for i in SEED_IDS]
    if scenario == "list_todos":
        return "list_todos", [{"limit": 20}]
    if scenario == "create_todo":
        return "create_todo", [{"title": "bench todo", "description": "created by wrk"}]
    if scenario == "update_todo":
        return "update_todo", [
            {"todo_id": i, "title": f"bench updated {n % 7}", "completed": n % 2 == 0}
            for n, i in enumerate(SEED_IDS)
        ]
    raise ValueError(scenario)


def scenario_bodies(scenario: str, era: Era) -> list[str]:
    tool, calls = scenario_calls(scenario)
    return [era.body(tool, arguments) for arguments in calls]


def post(
    url: str, body: str, token: str, era: Era, tool: str, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", **era.headers(tool)},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def looks_like_error(body: str) -> bool:
    """The same test as bench/mcp.lua's response(): a tool error or any "error" key."""
    return bool(re.search(r'"isError":\s*true', body)) or '"error"' in body


def validate(server: str, url: str, scenario: str, token: str, era: Era) -> dict[str, Any]:
    """One request of the scenario, checked in Python (status, JSON-RPC, result shape)."""
    tool, _ = scenario_calls(scenario)
    status, headers, raw = post(url, scenario_bodies(scenario, era)[0], token, era, tool)
    problems = []
    if status != 200:
        problems.append(f"HTTP {status}")
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = {}
        problems.append("body is not JSON")
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, dict):
        problems.append(f"no result: {raw[:300]!r}")
        result = {}
    if result.get("isError"):
        problems.append(f"isError: {raw[:300]!r}")
    data = result.get("structuredContent") or {}
    if server != "floor":
        if scenario in ("get_todo", "create_todo", "update_todo"):
            if not isinstance(data.get("todo"), dict) or "id" not in data["todo"]:
                problems.append(f"no todo in result: {raw[:300]!r}")
        elif scenario == "list_todos":
            todos = data.get("todos")
            if not isinstance(todos, list) or len(todos) != 20 or "next_cursor" not in data:
                problems.append(f"bad list result: {raw[:300]!r}")
    if server == "ours" and "x-request-id" not in headers:
        problems.append("no X-Request-ID")
    if b"error" in raw or b'"isError":true' in raw:
        problems.append(f"error marker in a successful body: {raw[:300]!r}")
    if era.modern and server != "floor" and result.get("resultType") != "complete":
        problems.append(f"not a 2026-07-28 result (no resultType): {raw[:300]!r}")
    if problems:
        raise RuntimeError(
            f"{server} {era.name} {scenario}: validation failed: {'; '.join(problems)}"
        )
    return {"status": status, "bytes": len(raw)}
