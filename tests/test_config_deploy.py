"""The production recipe (deploy/): gunicorn with uvicorn workers and reuse_port, the metrics
directory emptied at start, counts adding up over its workers, every log line JSON; connections
bounded (per-worker concurrency, keep-alive, body time limit, the unit's file descriptors);
the Grafana dashboard only uses metrics that exist; the systemd unit runs that gunicorn
configuration."""

from __future__ import annotations

import json
import re
import runpy
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from mcpauth.observability import metrics
from tests.conftest import MCP_ACCEPT, call_tool, free_port
from tests.servers import ROOT, serving
from tests.test_mcpauth_metrics import calls_per_process, scrape, server_env, value
from tests.test_mcpauth_slowclients import slow_post

DEPLOY = ROOT / "deploy"


@contextmanager
def gunicorn_process(port: int, env: dict[str, str], output: Path) -> Iterator[str]:
    """``gunicorn -c deploy/gunicorn.conf.py`` on 127.0.0.1:port; yield its base URL."""
    import os

    full_env = {
        **os.environ,
        "SECRET_KEY": "test-secret",
        "PYTHONUNBUFFERED": "1",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        **env,
    }
    full_env.pop("DJANGO_SETTINGS_MODULE", None)  # the recipe's own default: config.settings
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py")]
    with output.open("w+b") as log:
        proc = subprocess.Popen(cmd, cwd="/", env=full_env, stdout=log, stderr=subprocess.STDOUT)
        with serving(proc, f"http://127.0.0.1:{port}", log, what="gunicorn", seconds=40) as base:
            yield base


def stale_counter(directory: Path, pid: int, count: float) -> None:
    """A previous run's counter file, as a worker that died long ago left it."""
    directory.mkdir(parents=True, exist_ok=True)
    stale = MmapedDict(str(directory / f"counter_{pid}.db"))
    key = mmap_key(
        "mcp_tool_calls",
        "mcp_tool_calls_total",
        ["tool", "outcome"],
        ["list_todos", "ok"],
        metrics.TOOL_CALLS._documentation,
    )
    stale.write_value(key, count, 0.0)
    stale.close()


def test_gunicorn_recipe(live, mint, idp, tmp_path):
    metrics_dir = tmp_path / "metrics"
    stale_counter(metrics_dir, 4_000_000, 1000.0)
    output = tmp_path / "gunicorn.log"
    env = {
        **server_env(idp.issuer, tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "WEB_CONCURRENCY": "2",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    token = mint(client_id="gunicorn-client", org_id="gunicorn-org", scope="todo:read")
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}", "connection": "close"}
    with gunicorn_process(free_port(), env, output) as base:
        assert not (metrics_dir / "counter_4000000.db").exists()  # emptied at start

        def one(_: int) -> int:
            with httpx2.Client() as http:
                resp = http.post(f"{base}/mcp", json=call_tool("list_todos"), headers=headers)
                return resp.status_code

        sent = 0
        with ThreadPoolExecutor(max_workers=10) as pool:
            while sent < 20 or (len(calls_per_process(metrics_dir)) < 2 and sent < 200):
                assert list(pool.map(one, range(10))) == [200] * 10
                sent += 10
        assert len(calls_per_process(metrics_dir)) == 2  # reuse_port spread them
        after = scrape(base)
    assert value(after, "mcp_tool_calls_total", tool="list_todos", outcome="ok") == sent

    records = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    loggers = {r["logger"] for r in records}
    assert "gunicorn.error" in loggers  # the master's own lines, as JSON too
    assert any("emptied" in r["message"] for r in records if r["logger"] == "gunicorn.error")
    mcp_lines = [r for r in records if r["logger"] == "mcpauth.access" and r["path"] == "/mcp"]
    assert len(mcp_lines) == sent
    assert not loggers & {"uvicorn.access", "gunicorn.access"}
    assert token not in output.read_text()


def test_grafana_dashboard_uses_only_our_metrics():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    defined = {
        m._name if m._type != "counter" else f"{m._name}_total"
        for m in (
            metrics.TOOL_CALLS,
            metrics.TOOL_CALL_DURATION,
            metrics.REQUESTS,
            metrics.AUTH_FAILURES,
            metrics.RATE_LIMITED,
            metrics.AUDIT_WRITE,
            metrics.JWKS_REFRESH,
        )
    }
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\b(mcp_[a-z_]+)\b", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in defined, (name, expr)
            used.add(base)
    assert used == defined  # every metric has a panel
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_systemd_unit_runs_the_gunicorn_recipe():
    unit = (DEPLOY / "mcp-governed.service").read_text()
    assert "ExecStart=/srv/mcp/.venv/bin/gunicorn -c deploy/gunicorn.conf.py" in unit
    assert "Environment=PROMETHEUS_MULTIPROC_DIR=/run/mcp-governed/metrics" in unit
    assert "RuntimeDirectory=mcp-governed" in unit


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {k: v for k, v in pairs}


def test_the_recipe_bounds_connections(monkeypatch):
    """Per worker: ``limit_concurrency`` (uvicorn's, through the worker class) and the keep-alive
    timeout; the unit's ``LimitNOFILE`` holds every worker's connections of ``env.example``."""
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    worker = conf["worker_class"]
    assert worker.CONFIG_KWARGS["limit_concurrency"] == 1000
    assert worker.CONFIG_KWARGS["http"] == "auto" and conf["keepalive"] == 5
    monkeypatch.setenv("GUNICORN_LIMIT_CONCURRENCY", "50")
    monkeypatch.setenv("GUNICORN_KEEPALIVE", "2")
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert conf["worker_class"].CONFIG_KWARGS["limit_concurrency"] == 50
    assert conf["keepalive"] == 2
    example = env_example()
    connections = int(example["WEB_CONCURRENCY"]) * int(example["GUNICORN_LIMIT_CONCURRENCY"])
    (nofile,) = re.findall(
        r"^LimitNOFILE=(\d+)$", (DEPLOY / "mcp-governed.service").read_text(), re.M
    )
    assert int(nofile) >= connections + 1024  # and room for the database, Redis and logs
    assert float(example["MCPAUTH_BODY_TIMEOUT"]) > 0


def test_gunicorn_sheds_slow_clients(live, mint, idp, tmp_path):
    """One worker with room for four connections: three stalled bodies fill it up to the point
    where a fourth request is answered 503 by uvicorn at once; they get 408 after
    ``MCPAUTH_BODY_TIMEOUT`` and are closed, and the worker serves again. An idle keep-alive
    connection is closed after ``GUNICORN_KEEPALIVE``."""
    env = {
        **server_env(idp.issuer, tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "WEB_CONCURRENCY": "1",
        "GUNICORN_LIMIT_CONCURRENCY": "4",
        "GUNICORN_KEEPALIVE": "1",
        "MCPAUTH_BODY_TIMEOUT": "2",
    }
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {mint()}", "connection": "close"}
    body = call_tool("list_todos")
    with gunicorn_process(free_port(), env, tmp_path / "gunicorn.log") as base:
        with ThreadPoolExecutor(max_workers=3) as pool:
            stalled = [pool.submit(slow_post, f"{base}/mcp", every=None) for _ in range(3)]
            time.sleep(0.7)
            full = httpx2.post(f"{base}/mcp", json=body, headers=headers)
            answers = [f.result(timeout=30) for f in stalled]
        assert full.status_code == 503
        assert [(a.status, a.closed) for a in answers] == [(408, True)] * 3
        assert all(a.seconds >= 1.8 for a in answers)
        assert httpx2.post(f"{base}/mcp", json=body, headers=headers).status_code == 200
        # keep-alive: an answered request's connection stays open, idle, for about a second
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            answered = time.monotonic()
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            assert time.monotonic() - answered < 4  # closed by the server, not held 5 s or more
