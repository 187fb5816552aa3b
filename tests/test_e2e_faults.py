"""Backing services failing under a running server process, and coming back.

A loopback TCP proxy sits between a uvicorn subprocess and PostgreSQL (or Redis). While calls are
flowing, the test "stops" the service by closing the proxy's listener and cutting every proxied
connection, then "restarts" it by listening again on the same port. The server is never
restarted. Checked:

* PostgreSQL down: calls fail fast with a JSON-RPC error (HTTP 5xx), ``/health/ready`` is 503,
  and both recover on their own; no todo ever exists without its ``ok`` audit row;
* PostgreSQL accepting connections but never answering: requests still end (``connect_timeout``);
* Redis down: fail closed (503 ``temporarily_unavailable``, audited, the tool does not run), or
  with ``MCPAUTH_RATE_LIMIT_FAIL_OPEN=1`` the calls succeed; both recover.

Every HTTP call the test makes has a timeout, so a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from django.db import connection

from audit.models import AuditEvent
from tests.conftest import MCP_ACCEPT, call_tool, free_port, seed_todo_scopes
from tests.servers import uvicorn_process
from tests.test_e2e_concurrency import server_env
from todos.models import Todo

#: Bound on every HTTP call the test makes: a call that takes longer counts as a hang.
CALL_TIMEOUT = 10.0


class TcpProxy:
    """A threaded loopback TCP proxy to ``127.0.0.1:upstream`` on a fixed port.

    ``stop()`` closes the listener (new connections are refused) and cuts every proxied
    connection; ``start()`` listens again on the same port. With ``blackhole`` set, connections
    are accepted and bytes are read but nothing is forwarded either way (a peer that is "up"
    but never answers).
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.accepted = 0
        self.blackhole = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stopped), daemon=True).start()

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.blackhole:
                with self._lock:
                    self._socks.add(client)
                threading.Thread(target=self._pump, args=(client, None), daemon=True).start()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                if stopped.is_set():
                    client.close()
                    server.close()
                    return
                self._socks.update((client, server))
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if dst is not None and not self.blackhole:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                if sock is not None:
                    self._cut(sock)

    def _cut(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._socks.discard(sock)

    def stop(self) -> None:
        self.blackhole = False
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            self._cut(sock)


@contextlib.contextmanager
def proxy_to(upstream: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@dataclass
class Observed:
    tool: str
    title: str
    status: int  # 0: no HTTP response (timeout or connection error)
    outcome: str
    request_id: str
    started: float
    ended: float
    body: Any

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def clean_failure(self) -> bool:
        """A JSON-RPC error with a 5xx status, or a tool error: never a hang or a bare 500."""
        if self.outcome == "tool_error":
            return True
        return self.status >= 500 and self.outcome == f"rpc_error_{self.status}"

    def created_id(self) -> str | None:
        if self.tool != "create_todo" or self.outcome != "ok":
            return None
        return str(self.body["result"]["structuredContent"]["todo"]["id"])


def call(http: httpx2.Client, base: str, token: str, tool: str, args: dict[str, Any]) -> Observed:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    started = time.monotonic()
    try:
        resp = http.post(f"{base}/mcp", json=call_tool(tool, args), headers=headers)
    except httpx2.HTTPError as exc:
        ended = time.monotonic()
        return Observed(
            tool, args.get("title", ""), 0, type(exc).__name__, "", started, ended, None
        )
    ended = time.monotonic()
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if resp.status_code == 200 and isinstance(body, dict) and isinstance(body.get("result"), dict):
        outcome = "tool_error" if body["result"].get("isError") else "ok"
    elif isinstance(body, dict) and isinstance(body.get("error"), dict):
        outcome = f"rpc_error_{resp.status_code}"
    else:
        outcome = f"raw_{resp.status_code}"
    request_id = resp.headers.get("x-request-id", "")
    return Observed(
        tool, args.get("title", ""), resp.status_code, outcome, request_id, started, ended, body
    )


@dataclass
class Load:
    """Background clients calling one server until stopped; every call bounded in time."""

    base: str
    token: str
    name: str = "load"
    threads: int = 3
    calls: list[Observed] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=CALL_TIMEOUT + 5)
        assert not any(t.is_alive() for t in self._workers), "a load thread hung"

    def _run(self, index: int) -> None:
        with httpx2.Client(timeout=CALL_TIMEOUT) as http:
            for n in range(10_000):
                if self._stop.is_set():
                    return
                if n % 3 == 2:
                    tool, args = "list_todos", {"limit": 5}
                else:
                    tool, args = "create_todo", {"title": f"{self.name}-{index}-{n}"}
                observed = call(http, self.base, self.token, tool, args)
                with self._lock:
                    self.calls.append(observed)
                time.sleep(0.02)

    def between(self, start: float, end: float) -> list[Observed]:
        """Calls sent after ``start`` and answered before ``end``."""
        with self._lock:
            return [c for c in self.calls if c.started > start and c.ended < end]

    def wait_for(self, since: float, count: int, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while len(self.between(since, float("inf"))) < count:
            assert time.monotonic() < deadline, f"{self.name}: fewer than {count} calls"
            time.sleep(0.05)


def ready(base: str, timeout: float = CALL_TIMEOUT) -> tuple[int, dict[str, Any]]:
    resp = httpx2.get(f"{base}/health/ready", timeout=timeout)
    return resp.status_code, resp.json()


def wait_ready(base: str, want: int, limit: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        status, body = ready(base)
        if status == want:
            return body
        assert time.monotonic() < deadline, f"/health/ready stayed {status}: {body}"
        time.sleep(0.2)


def outcomes(calls: list[Observed]) -> dict[str, int]:
    return dict(sorted(Counter(c.outcome for c in calls).items()))


@pytest.fixture
def quiet_http(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="httpx2")  # not one INFO line per request


def assert_no_todo_without_audit(observed: list[Observed]) -> tuple[int, int]:
    """Every Todo row has its ok ``create_todo`` audit row; every create a client saw succeed
    has its audit row under the response's ``X-Request-ID``. Returns (todos, audit rows)."""
    ok_creates = {
        row["arguments"].get("title"): row
        for row in AuditEvent.objects.filter(tool="create_todo", outcome="ok").values(
            "request_id", "arguments"
        )
    }
    todos = dict(Todo.all_tenants.values_list("title", "pk"))
    assert len(todos) == Todo.all_tenants.count(), "titles are unique in these tests"
    missing = sorted(set(todos) - set(ok_creates))
    assert not missing, f"todos written without their audit row: {missing[:5]}"
    assert len(ok_creates) == len(todos)  # and no ok create row without its todo
    seen_ok = [c for c in observed if c.created_id() is not None]
    by_request = {
        row["request_id"]: row
        for row in AuditEvent.objects.filter(request_id__in=[c.request_id for c in seen_ok]).values(
            "request_id", "outcome", "tool"
        )
    }
    for c in seen_ok:
        assert by_request[c.request_id]["outcome"] == "ok", c
        assert str(todos[c.title]) == c.created_id()
    return len(todos), len(ok_creates)


@pytest.mark.needs_shared_services
def test_postgres_stopped_mid_run_then_restarted(transactional_db, mint, idp, tmp_path, quiet_http):
    seed_todo_scopes()
    db = connection.settings_dict
    token = mint(client_id="pg-fault", org_id="pg-fault-org", ttl=600)
    with proxy_to(int(db["PORT"])) as proxy:
        env = server_env(
            idp.issuer,
            str(tmp_path),
            DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}",
        )
        with (
            uvicorn_process(free_port(), env) as base,
            Load(base, token, "pg") as load,
            httpx2.Client(timeout=CALL_TIMEOUT) as http,
        ):
            assert ready(base)[0] == 200
            load.wait_for(0, 15)

            cut_begin = time.monotonic()
            proxy.stop()  # "stop PostgreSQL": refuse new connections, cut the open ones
            cut_end = time.monotonic()
            load.wait_for(cut_end, 15)
            down_status, down_ready = ready(base)
            # a tenant no worker has cached: admission itself needs the database
            fresh = mint(client_id="pg-fault-new", org_id="pg-fault-other-org")
            new_tenant_down = call(http, base, fresh, "list_todos", {})

            restore_begin = time.monotonic()
            proxy.start()  # "restart PostgreSQL" on the same port; the app is not restarted
            up_ready = wait_ready(base, 200)
            ready_at = time.monotonic()
            load.wait_for(ready_at, 15)
            new_tenant_up = call(http, base, fresh, "list_todos", {})
            finished = time.monotonic()

    healthy = load.between(0, cut_begin)
    down = load.between(cut_end, restore_begin)
    after = load.between(ready_at, finished)
    print(
        f"\nPostgreSQL cut: {len(load.calls)} calls; before {outcomes(healthy)}, "
        f"down {outcomes(down)}, after ready {outcomes(after)}; proxied connections "
        f"{proxy.accepted}; slowest call while down {max(c.seconds for c in down):.2f}s; "
        f"ready again {ready_at - restore_begin:.2f}s after the restart"
    )
    print(f"/health/ready while down: {down_status} {down_ready['checks']['database']}")
    assert healthy and all(c.outcome == "ok" for c in healthy)

    # down: every call fails fast and cleanly (a JSON-RPC error with a 5xx status)
    assert down and all(c.clean_failure for c in down), [c for c in down if not c.clean_failure]
    assert all(c.request_id for c in down)
    assert max(c.seconds for c in down) < 5
    assert down_status == 503 and down_ready["status"] == "unavailable"
    assert down_ready["checks"]["database"]["ok"] is False
    assert down_ready["checks"]["ratelimit_cache"]["ok"] is True
    assert new_tenant_down.clean_failure and new_tenant_down.status == 500, new_tenant_down

    # back: readiness and calls recover without restarting the app
    assert up_ready["status"] == "ok"
    assert after and all(c.outcome == "ok" for c in after), outcomes(after)
    assert new_tenant_up.outcome == "ok"

    # nothing written while down, and no todo without its audit row
    down_titles = [c.title for c in down if c.tool == "create_todo"]
    assert down_titles and not Todo.all_tenants.filter(title__in=down_titles).exists()
    assert not AuditEvent.objects.filter(request_id__in=[c.request_id for c in down]).exists()
    todos, rows = assert_no_todo_without_audit(load.calls)
    print(f"todos checked against their audit rows: {todos} todos, {rows} ok create rows")


@pytest.mark.needs_shared_services
def test_postgres_not_answering_fails_within_a_bound(transactional_db, idp, tmp_path, quiet_http):
    """A database that accepts connections but never answers (a stuck server or a dead load
    balancer) must not hang requests: with CONN_MAX_AGE=0 every request opens a connection,
    so libpq's connect_timeout (DATABASE_CONNECT_TIMEOUT, default 5 s) bounds it."""
    seed_todo_scopes()
    db = connection.settings_dict
    with proxy_to(int(db["PORT"])) as proxy:
        env = server_env(
            idp.issuer,
            str(tmp_path),
            DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}",
            CONN_MAX_AGE="0",
        )
        with uvicorn_process(free_port(), env) as base:
            assert ready(base)[0] == 200
            proxy.blackhole = True
            started = time.monotonic()
            try:
                status, _ = ready(base, timeout=12)
            except httpx2.TimeoutException:
                status = 0
            finally:
                proxy.stop()  # cut the swallowed connections so the server can shut down
            print(
                f"\n/health/ready against a silent database: {status or 'no answer'} after "
                f"{time.monotonic() - started:.1f}s"
            )
    assert status == 503


@pytest.mark.needs_shared_services
def test_redis_down_mid_run_fails_closed_or_open_as_configured(
    transactional_db, mint, idp, tmp_path, quiet_http
):
    """docs/security.md "Rate limits": with the rate-limit cache unreachable, calls fail closed
    with an audited 503 (no tool runs), unless MCPAUTH_RATE_LIMIT_FAIL_OPEN is on; both recover."""
    seed_todo_scopes()
    redis = urlsplit(os.environ["REDIS_URL"])
    closed_token = mint(client_id="redis-closed", org_id="redis-org", ttl=600)
    open_token = mint(client_id="redis-open", org_id="redis-org", ttl=600)
    with proxy_to(redis.port or 6379) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}{redis.path or '/0'}"
        env = server_env(idp.issuer, str(tmp_path), REDIS_URL=proxied)
        env_open = {**env, "MCPAUTH_RATE_LIMIT_FAIL_OPEN": "1"}
        with (
            uvicorn_process(free_port(), env) as closed_base,
            uvicorn_process(free_port(), env_open) as open_base,
            Load(closed_base, closed_token, "closed") as closed,
            Load(open_base, open_token, "open") as opened,
        ):
            assert ready(closed_base)[0] == 200 and ready(open_base)[0] == 200
            closed.wait_for(0, 10)
            opened.wait_for(0, 10)

            cut_begin = time.monotonic()
            proxy.stop()
            cut_end = time.monotonic()
            # past what a lease taken before the cut admits (MCPAUTH_RATE_LIMIT_LEASE: 32)
            closed.wait_for(cut_end, 15 + 32)
            opened.wait_for(cut_end, 15)
            down_ready = ready(closed_base)

            restore_begin = time.monotonic()
            proxy.start()
            wait_ready(closed_base, 200)
            wait_ready(open_base, 200)
            ready_at = time.monotonic()
            closed.wait_for(ready_at, 10)
            opened.wait_for(ready_at, 10)
            finished = time.monotonic()

    phases = {
        name: (
            load.between(0, cut_begin),
            load.between(cut_end, restore_begin),
            load.between(ready_at, finished),
        )
        for name, load in (("fail closed", closed), ("fail open", opened))
    }
    for name, (before, down, after) in phases.items():
        print(
            f"\nRedis cut, {name}: before {outcomes(before)}, down {outcomes(down)}, "
            f"after ready {outcomes(after)}; slowest call while down "
            f"{max(c.seconds for c in down):.2f}s"
        )
        assert before and all(c.outcome == "ok" for c in before)
        assert after and all(c.outcome == "ok" for c in after)
        assert max(c.seconds for c in down) < 5
    print(f"/health/ready while Redis is down: {down_ready[0]} {down_ready[1]['checks']}")
    assert down_ready[0] == 503

    # fail closed: 503 temporarily_unavailable with Retry-After, audited, and no tool ran; only
    # what the worker had leased before the cut (counted in Redis then) is admitted first
    _, down_calls, _ = phases["fail closed"]
    leased = [c for c in down_calls if c.outcome == "ok"]
    down = [c for c in down_calls if c.outcome != "ok"]
    print(f"fail closed: {len(leased)} leased calls admitted after the cut, then refusals")
    assert len(leased) <= 32  # MCPAUTH_RATE_LIMIT_LEASE's default: one lease at most
    if leased and down:  # a lease is used up before the worker asks Redis and is refused
        assert max(c.started for c in leased) <= min(c.started for c in down) + 1.0
    assert down and all(c.status == 503 and c.clean_failure for c in down), outcomes(down)
    assert all(c.body["error"]["data"]["error"] == "temporarily_unavailable" for c in down)
    rows = {
        r["request_id"]: r
        for r in AuditEvent.objects.filter(request_id__in=[c.request_id for c in down]).values(
            "request_id", "outcome", "status", "error_code"
        )
    }
    assert len(rows) == len(down)
    assert {(r["outcome"], r["status"], r["error_code"]) for r in rows.values()} == {
        ("server_error", 503, "ratelimit_cache_down")
    }
    down_titles = [c.title for c in down if c.tool == "create_todo"]
    assert down_titles and not Todo.all_tenants.filter(title__in=down_titles).exists()

    # fail open: the calls ran and were audited as ok
    _, down_open, _ = phases["fail open"]
    assert down_open and all(c.outcome == "ok" for c in down_open), outcomes(down_open)
    assert AuditEvent.objects.filter(
        request_id__in=[c.request_id for c in down_open], outcome="ok"
    ).count() == len(down_open)
    todos, rows_ok = assert_no_todo_without_audit(closed.calls + opened.calls)
    print(
        f"audit rows checked: {len(rows)} fail-closed refusals, {len(down_open)} fail-open "
        f"successes; {todos} todos matched to {rows_ok} ok create rows"
    )
