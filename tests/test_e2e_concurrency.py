"""End to end under concurrency: 8 clients x 250 mixed calls against two server worker processes.

One uvicorn with two workers shares PostgreSQL and Redis. Eight clients of two tenants (distinct
``client_id``s, one of them held to ``30/m`` by a ``ClientPolicy`` and pushed over it on purpose)
fire raw JSON-RPC ``tools/call`` POSTs concurrently: creates (some invalid), lists (paged),
gets, updates and deletes on their tenant's todos, probes of the other tenant's todos, and a few
writes with a read-only token. Afterwards the database must agree with what the clients saw:

* every todo a client created and nobody deleted exists exactly once, in its tenant, and no
  other todo exists;
* one audit row per call, with the request id, tool, tenant and outcome the client observed;
* no client ever saw an id of the other tenant, and every cross-tenant probe was "not found";
* the limited client got at most its limit per rate-limit window it spanned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from audit.models import AuditEvent
from mcpauth.models import ClientPolicy
from tests.conftest import MCP_ACCEPT, call_tool, free_port, seed_todo_scopes, window_of
from tests.servers import server_env, uvicorn_process
from todos.models import Todo

pytestmark = pytest.mark.needs_shared_services

TENANTS = ("e2e-alpha", "e2e-beta")
CLIENTS = 8
CALLS_PER_CLIENT = 250
LIMITED_CLIENT = "e2e-client-7"
LIMIT, WINDOW = 30, 60
DEADLINE_SECONDS = 120
NO_SUCH_TODO = "00000000-0000-4000-8000-000000000000"


@dataclass
class Call:
    client_id: str
    tenant: str
    tool: str
    arguments: dict[str, Any]
    status: int
    outcome: str
    request_id: str
    sent: float
    received: float
    result: dict[str, Any] | None
    error_text: str
    probe: bool
    readonly: bool


@dataclass
class World:
    """What the clients observed, shared by all of them (one event loop, no threads)."""

    live: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in TENANTS})
    owner: dict[str, str] = field(default_factory=dict)  # todo id -> tenant, from create replies
    deleted: set[str] = field(default_factory=set)
    seen: dict[str, set[str]] = field(default_factory=dict)  # client id -> todo ids it was shown
    calls: list[Call] = field(default_factory=list)


def classify(status: int, body: dict[str, Any]) -> str:
    if status == 200 and isinstance(body.get("result"), dict):
        return "tool_error" if body["result"].get("isError") else "ok"
    return {429: "rate_limited", 403: "denied"}.get(status, f"http_{status}")


def tool_result(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``(structured result, "")`` for a success, ``(None, error text)`` for a tool error."""
    result = body.get("result")
    if not isinstance(result, dict):
        return None, json.dumps(body.get("error"))
    content = result.get("content") or [{}]
    text = str(content[0].get("text", ""))
    if result.get("isError"):
        return None, text
    data = result.get("structuredContent")
    return (data if isinstance(data, dict) else json.loads(text)), ""


async def send(
    http: httpx2.AsyncClient,
    url: str,
    token: str,
    client_id: str,
    tenant: str,
    tool: str,
    arguments: dict[str, Any],
    world: World,
    *,
    probe: bool = False,
    readonly: bool = False,
) -> Call:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    sent = time.time()
    resp = await http.post(
        url, json=call_tool(tool, arguments, id=len(world.calls)), headers=headers
    )
    received = time.time()
    body = resp.json()
    assert body.get("jsonrpc") == "2.0", body
    result, error_text = tool_result(body)
    call = Call(
        client_id=client_id,
        tenant=tenant,
        tool=tool,
        arguments=arguments,
        status=resp.status_code,
        outcome=classify(resp.status_code, body),
        request_id=resp.headers.get("x-request-id", ""),
        sent=sent,
        received=received,
        result=result,
        error_text=error_text,
        probe=probe,
        readonly=readonly,
    )
    if resp.status_code == 429:
        assert int(resp.headers["retry-after"]) >= 1
        assert body["error"]["data"]["error"] == "rate_limited"
    world.calls.append(call)
    return call


async def run_client(
    http: httpx2.AsyncClient, url: str, index: int, tokens: dict[str, str], world: World
) -> None:
    client_id = f"e2e-client-{index}"
    tenant, other = TENANTS[index % 2], TENANTS[1 - index % 2]
    rng = random.Random(1000 + index)
    seen = world.seen.setdefault(client_id, set())
    cursor: str | None = None

    for n in range(CALLS_PER_CLIENT):
        roll = rng.random()
        mine = sorted(world.live[tenant])
        probe = readonly = False
        args: dict[str, Any]
        if roll < 0.04:  # a write with a read-only token: 403 insufficient_scope
            readonly = True
            tool, args = "create_todo", {"title": f"{client_id} read-only {n}"}
        elif roll < 0.30 or not mine:
            title = "   " if rng.random() < 0.05 else f"{client_id} #{n}"
            tool, args = "create_todo", {"title": title, "description": f"by {client_id}"}
        elif roll < 0.50:
            tool, args = "list_todos", {"limit": rng.randint(1, 20)}
            if cursor is not None and rng.random() < 0.6:
                args["cursor"] = cursor
            if rng.random() < 0.2:
                args["completed"] = rng.random() < 0.5
        elif roll < 0.62:
            tool, args = "get_todo", {"todo_id": rng.choice(mine)}
        elif roll < 0.76:
            tool, args = (
                "update_todo",
                {"todo_id": rng.choice(mine), "completed": rng.random() < 0.5},
            )
            if rng.random() < 0.5:
                args["title"] = f"{client_id} renamed {n}"
        elif roll < 0.86:
            tool, args = "delete_todo", {"todo_id": rng.choice(mine)}
        else:  # the other tenant's todos must look exactly like missing ones
            probe = True
            theirs = sorted(world.live[other])
            tool = rng.choice(["get_todo", "update_todo", "delete_todo"])
            args = {"todo_id": rng.choice(theirs) if theirs else NO_SUCH_TODO}
            if tool == "update_todo":
                args["title"] = "PWNED"
        token = tokens[f"{client_id}:ro" if readonly else client_id]
        call = await send(
            http, url, token, client_id, tenant, tool, args, world, probe=probe, readonly=readonly
        )
        if tool == "list_todos":
            cursor = call.result["next_cursor"] if call.result else None
        if call.result is None:
            continue
        if tool == "create_todo":
            todo_id = call.result["todo"]["id"]
            world.owner[todo_id] = tenant
            world.live[tenant].add(todo_id)
            seen.add(todo_id)
        elif tool == "list_todos":
            seen.update(t["id"] for t in call.result["todos"])
        elif tool in ("get_todo", "update_todo"):
            seen.add(call.result["todo"]["id"])
        elif tool == "delete_todo":
            world.deleted.add(call.result["deleted"])
            world.live[tenant].discard(call.result["deleted"])


async def drive(url: str, tokens: dict[str, str], world: World) -> None:
    limits = httpx2.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    timeout = httpx2.Timeout(30.0, connect=5.0)
    async with httpx2.AsyncClient(limits=limits, timeout=timeout) as http:
        await asyncio.wait_for(
            asyncio.gather(*(run_client(http, url, i, tokens, world) for i in range(CLIENTS))),
            timeout=DEADLINE_SECONDS,
        )


def test_eight_clients_two_tenants_two_workers(transactional_db, mint, idp, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="httpx2")  # not one INFO line per request
    seed_todo_scopes()
    ClientPolicy.objects.create(client_id=LIMITED_CLIENT, mode="custom", rate=f"{LIMIT}/m")
    assert not Todo.all_tenants.exists() and not AuditEvent.objects.exists()
    tokens: dict[str, str] = {}
    for i in range(CLIENTS):
        client_id, org = f"e2e-client-{i}", TENANTS[i % 2]
        tokens[client_id] = mint(client_id=client_id, org_id=org, ttl=900)
        tokens[f"{client_id}:ro"] = mint(client_id=client_id, org_id=org, scope="todo:read")

    world = World()
    env = server_env(idp.issuer, str(tmp_path))
    with uvicorn_process(free_port(), env, workers=2) as base:
        started = time.monotonic()
        asyncio.run(drive(f"{base}/mcp", tokens, world))
        elapsed = time.monotonic() - started

    calls = world.calls
    assert len(calls) == CLIENTS * CALLS_PER_CLIENT
    observed = Counter(c.outcome for c in calls)
    print(
        f"\n{len(calls)} calls by {CLIENTS} clients in {elapsed:.1f}s "
        f"({len(calls) / elapsed:.0f}/s) on 2 workers; outcomes: {dict(sorted(observed.items()))}"
    )
    print(f"calls per tool: {dict(sorted(Counter(c.tool for c in calls).items()))}")
    unexpected = [
        c for c in calls if c.outcome not in {"ok", "tool_error", "rate_limited", "denied"}
    ]
    assert not unexpected, unexpected[:5]

    # --- every created todo (minus deleted ones) exists exactly once, in its tenant --------------
    expected = {todo_id: t for todo_id, t in world.owner.items() if todo_id not in world.deleted}
    rows = list(Todo.all_tenants.values_list("pk", "tenant__external_id", "title"))
    in_db = Counter(str(pk) for pk, _, _ in rows)
    assert all(n == 1 for n in in_db.values())
    assert {str(pk): tenant for pk, tenant, _ in rows} == expected
    assert not any(title == "PWNED" for *_, title in rows)
    per_tenant = Counter(expected.values())
    print(
        f"todos: {len(world.owner)} created, {len(world.deleted)} deleted, "
        f"{len(rows)} rows checked ({dict(per_tenant)})"
    )

    # --- one audit row per call, matching what the client observed ----------------------------
    audit = {
        row["request_id"]: row
        for row in AuditEvent.objects.filter(method="tools/call").values(
            "request_id", "client_id", "tenant", "tool", "outcome", "status", "error_code"
        )
    }
    assert AuditEvent.objects.count() == len(calls)  # nothing but the calls was recorded
    assert len(audit) == len(calls)
    assert {c.request_id for c in calls} == set(audit)
    mismatched = [
        (c, audit[c.request_id])
        for c in calls
        if (
            audit[c.request_id]["outcome"],
            audit[c.request_id]["status"],
            audit[c.request_id]["tool"],
            audit[c.request_id]["client_id"],
            audit[c.request_id]["tenant"],
        )
        != (c.outcome, c.status, c.tool, c.client_id, c.tenant)
    ]
    assert not mismatched, mismatched[:3]
    in_audit = Counter(row["outcome"] for row in audit.values())
    assert in_audit == observed
    per_client = Counter((row["client_id"], row["outcome"]) for row in audit.values())
    assert per_client == Counter((c.client_id, c.outcome) for c in calls)
    readonly = [c for c in calls if c.readonly]
    assert {c.outcome for c in readonly} <= {"denied", "rate_limited"}
    denied = [audit[c.request_id] for c in readonly if c.outcome == "denied"]
    assert denied and all(r["error_code"] == "insufficient_scope" for r in denied)
    assert not any(c.outcome == "denied" for c in calls if not c.readonly)
    print(f"audit rows checked: {len(audit)}; per outcome: {dict(sorted(in_audit.items()))}")

    # --- no cross-tenant leakage ---------------------------------------------------------------
    seen_total = 0
    for client_id, ids in world.seen.items():
        tenant = TENANTS[int(client_id.rsplit("-", 1)[1]) % 2]
        assert ids <= set(world.owner), "a client was shown a todo nobody created"
        assert {world.owner[i] for i in ids} <= {tenant}, f"{client_id} saw another tenant's todo"
        seen_total += len(ids)
    probes = [c for c in calls if c.probe]
    admitted_probes = [c for c in probes if c.outcome != "rate_limited"]
    assert admitted_probes and all(c.outcome == "tool_error" for c in admitted_probes)
    assert all("not found" in c.error_text for c in admitted_probes)
    print(f"ids seen by clients: {seen_total}, all own-tenant; cross-tenant probes: {len(probes)}")

    # --- the rate limit held across both workers ------------------------------------------------
    limited = [c for c in calls if c.client_id == LIMITED_CLIENT]
    admitted = [c for c in limited if c.outcome != "rate_limited"]
    windows = {window_of(LIMITED_CLIENT, t, WINDOW) for c in limited for t in (c.sent, c.received)}
    assert LIMIT <= len(admitted) <= LIMIT * len(windows)
    # a call's window is certain when it was sent and answered within the same one
    sent_in = {id(c): window_of(LIMITED_CLIENT, c.sent, WINDOW) for c in admitted}
    by_window = Counter(
        sent_in[id(c)]
        for c in admitted
        if sent_in[id(c)] == window_of(LIMITED_CLIENT, c.received, WINDOW)
    )
    assert all(n <= LIMIT for n in by_window.values()), by_window
    others = [c for c in calls if c.client_id != LIMITED_CLIENT]
    assert not any(c.outcome == "rate_limited" for c in others)
    print(
        f"limited client ({LIMIT}/m): {len(limited)} calls, {len(admitted)} admitted, "
        f"{len(limited) - len(admitted)} refused with 429, over {len(windows)} window(s)"
    )
