"""Prometheus metrics at /metrics: what each request counts, who may read them, and how every
worker's counts add up (multiprocess mode, two uvicorn workers)."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
from django.db import connection
from django.test import Client
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from mcpauth.observability import metrics
from mcpauth.observability.multiproc import clean
from tests.conftest import MCP_ACCEPT, call_tool, client_id_with_room, free_port, rpc
from tests.servers import uvicorn_process

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def scrape(base: str) -> Samples:
    resp = httpx2.get(f"{base}/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=")
    return parse(resp.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def post(base: str, token: str | None, body: dict) -> httpx2.Response:
    headers = dict(MCP_ACCEPT)
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx2.post(f"{base}/mcp", json=body, headers=headers)


def test_each_request_is_counted_with_bounded_labels(live, mint, settings):
    settings.MCPAUTH_RATE_LIMIT = "2/m"
    client_id = client_id_with_room("metered")
    token = mint(client_id=client_id, org_id="metrics-tenant-x", scope="todo:read")
    before = scrape(live.base)

    assert post(live.base, token, call_tool("list_todos")).status_code == 200
    denied = post(live.base, token, call_tool("create_todo", {"title": "t"}))
    assert denied.status_code == 403  # todo:read lacks todos.add_todo
    assert post(live.base, token, call_tool("list_todos")).status_code == 429  # 3rd of 2/m
    assert post(live.base, None, call_tool("list_todos")).status_code == 401
    assert post(live.base, mint(ttl=-120), call_tool("list_todos")).status_code == 401
    odd = f"no-such-tool-{uuid.uuid4().hex}"
    assert post(live.base, mint(), call_tool(odd)).json()["error"]["code"] == -32602
    assert post(live.base, mint(), rpc(f"made/up/{uuid.uuid4().hex}")).status_code == 200

    after = scrape(live.base)
    calls = "mcp_tool_calls_total"
    assert delta(before, after, calls, tool="list_todos", outcome="ok") == 1
    assert delta(before, after, calls, tool="create_todo", outcome="denied") == 1
    assert delta(before, after, calls, tool="list_todos", outcome="rate_limited") == 1
    assert delta(before, after, calls, tool="list_todos", outcome="unauthenticated") == 2
    assert delta(before, after, calls, tool="_unknown", outcome="invalid_request") == 1
    # the duration histogram only has calls that were admitted (the ok one here)
    duration = "mcp_tool_call_duration_seconds_count"
    assert delta(before, after, duration, tool="list_todos") == 1
    assert delta(before, after, duration, tool="create_todo") == 0

    failures = "mcp_auth_failures_total"
    assert delta(before, after, failures, reason="insufficient_scope") == 1
    assert delta(before, after, failures, reason="missing_token") == 1
    assert delta(before, after, failures, reason="expired") == 1
    assert delta(before, after, "mcp_rate_limited_total") == 1

    requests = "mcp_requests_total"
    assert delta(before, after, requests, method="tools/call", status="200") == 2
    assert delta(before, after, requests, method="tools/call", status="403") == 1
    assert delta(before, after, requests, method="tools/call", status="429") == 1
    assert delta(before, after, requests, method="tools/call", status="401") == 2
    assert delta(before, after, requests, method="other", status="200") == 1
    # each of the 7 requests wrote its audit row (refusals included)
    assert delta(before, after, "mcp_audit_write_seconds_count") == 7

    # bounded: no tenant, client, unknown tool or unknown method ever becomes a label value
    text = httpx2.get(f"{live.base}/metrics").text
    for leaked in (client_id, "metrics-tenant-x", odd, "made/up"):
        assert leaked not in text
    labels = {dict(k[1]).get("method") for k in after if k[0] == "mcp_requests_total"}
    assert labels - {None} <= metrics.KNOWN_METHODS | {"other"}


def test_jwks_refreshes_are_counted(live, mint, idp, settings):
    before = scrape(live.base)
    settings.MCPAUTH_JWKS_URL = f"{idp.url}/jwks.json"  # new settings: a fresh key set
    assert post(live.base, mint(), call_tool("list_todos")).status_code == 200
    settings.MCPAUTH_JWKS_URL = f"{idp.url}/missing.json"
    assert post(live.base, mint(), call_tool("list_todos")).status_code == 503
    after = scrape(live.base)
    assert delta(before, after, "mcp_jwks_refresh_total", result="ok") == 1
    assert delta(before, after, "mcp_jwks_refresh_total", result="error") == 1


# --- who may read /metrics -----------------------------------------------------------------


def get_metrics(client: Client, remote: str, **headers: str) -> int:
    return client.get("/metrics", REMOTE_ADDR=remote, headers=headers).status_code


@pytest.mark.django_db
def test_loopback_only_by_default(client):
    assert get_metrics(client, "127.0.0.1") == 200
    assert get_metrics(client, "::1") == 200
    assert get_metrics(client, "203.0.113.9") == 403
    assert get_metrics(client, "10.1.2.3") == 403
    # forwarded by a same-host proxy the server does not trust: not loopback's request
    assert get_metrics(client, "127.0.0.1", x_forwarded_for="198.51.100.4") == 403
    assert get_metrics(client, "127.0.0.1", forwarded="for=198.51.100.4") == 403
    assert client.post("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 405


@pytest.mark.django_db
def test_allowed_networks_open_it(client, settings):
    settings.MCPAUTH_METRICS_ALLOWED_IPS = "10.0.0.0/8, 192.0.2.7"
    assert get_metrics(client, "10.200.0.1") == 200
    assert get_metrics(client, "192.0.2.7") == 200
    assert get_metrics(client, "192.0.2.8") == 403
    assert get_metrics(client, "127.0.0.1") == 200  # loopback stays open


@pytest.mark.django_db
def test_bearer_token_opens_it(client, settings):
    settings.MCPAUTH_METRICS_TOKEN = "s3cr3t-scrape-token-0123456789"
    auth = {"authorization": "Bearer s3cr3t-scrape-token-0123456789"}
    assert get_metrics(client, "203.0.113.9", **auth) == 200
    assert get_metrics(client, "203.0.113.9", authorization="Bearer wrong") == 403
    assert get_metrics(client, "203.0.113.9", authorization="Basic czNjcjN0") == 403
    assert get_metrics(client, "203.0.113.9") == 403


@pytest.mark.django_db
def test_trusted_proxies_use_the_forwarded_address(client, settings):
    settings.MCPAUTH_TRUSTED_PROXIES = 1
    # loopback by its forwarded address only: not this host's loopback (a forged header sent
    # straight to the app port, or the proxy's own loopback)
    assert get_metrics(client, "203.0.113.9", x_forwarded_for="127.0.0.1") == 403
    assert get_metrics(client, "10.0.0.2", x_forwarded_for="127.0.0.1") == 403
    assert get_metrics(client, "127.0.0.1", x_forwarded_for="127.0.0.1") == 200
    assert get_metrics(client, "127.0.0.1", x_forwarded_for="203.0.113.9") == 403
    settings.MCPAUTH_METRICS_ALLOWED_IPS = "203.0.113.0/24"
    assert get_metrics(client, "127.0.0.1", x_forwarded_for="203.0.113.9") == 200


def test_bad_metrics_settings_are_check_errors(settings):
    from mcpauth.observability.checks import check_observability

    settings.MCPAUTH_METRICS_ALLOWED_IPS = "10.0.0.0/8 not-a-network"
    settings.MCPAUTH_METRICS_TOKEN = "short"
    settings.MCPAUTH_LOG_FORMAT = "xml"
    settings.MCPAUTH_TRACES_EXPORTER = "nosuchexporter"
    metrics_dir = settings.MCPAUTH_METRICS_DIR
    settings.MCPAUTH_METRICS_DIR = "/nonexistent/metrics"
    ids = {m.id for m in check_observability()}
    assert ids == {"mcpauth.E020", "mcpauth.W020", "mcpauth.E022", "mcpauth.E021", "mcpauth.E023"}
    settings.MCPAUTH_METRICS_ALLOWED_IPS = "10.0.0.0/8"
    settings.MCPAUTH_METRICS_TOKEN = "x" * 16
    settings.MCPAUTH_LOG_FORMAT = "json"
    settings.MCPAUTH_TRACES_EXPORTER = "console"
    settings.MCPAUTH_METRICS_DIR = metrics_dir
    assert check_observability() == []


def test_clean_removes_only_metric_files(tmp_path):
    (tmp_path / "counter_123.db").write_bytes(b"x")
    (tmp_path / "histogram_123.db").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("x")
    assert clean(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert clean(tmp_path / "new") == 0 and (tmp_path / "new").is_dir()


# --- two workers ---------------------------------------------------------------------------


def server_env(idp_issuer: str, var_dir: Path) -> dict[str, str]:
    """The test database (SQLite file or PostgreSQL) for a server subprocess."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        url = f"sqlite:///{db['NAME']}"
    else:
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return {
        "DEBUG": "0",
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": url,
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "BASE_URL": "http://127.0.0.1:8000",
        "MCPAUTH_ISSUER": idp_issuer,
        "MCPAUTH_TENANT_CLAIM": "org_id",
        "MCPAUTH_RATE_LIMIT": "100000/m",
        "LOG_LEVEL": "WARNING",
    }


def calls_per_process(directory: Path) -> Counter[str]:
    """``mcp_tool_calls_total`` as each worker's own files hold it, by process id."""
    per_pid: Counter[str] = Counter()
    for path in directory.glob("counter_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        for family in MultiProcessCollector.merge([str(path)]):
            if family.name == "mcp_tool_calls":
                per_pid[pid] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return per_pid


def test_twenty_calls_over_two_workers_read_as_twenty(live, mint, idp, tmp_path):
    metrics_dir = tmp_path / "metrics"
    env = {**server_env(idp.issuer, tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    token = mint(client_id="two-workers", org_id="two-workers-org", scope="todo:read")
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}", "connection": "close"}
    with uvicorn_process(free_port(), env, workers=2) as base:

        def one(_: int) -> int:
            with httpx2.Client() as http:  # a new connection per call: either worker takes it
                resp = http.post(f"{base}/mcp", json=call_tool("list_todos"), headers=headers)
                return resp.status_code

        sent = 0
        with ThreadPoolExecutor(max_workers=10) as pool:
            # 20 calls; more batches only if the kernel happened to give every one to a single
            # worker (bounded), since the point is two workers' counts adding up
            while sent < 20 or (len(calls_per_process(metrics_dir)) < 2 and sent < 200):
                assert list(pool.map(one, range(10))) == [200] * 10
                sent += 10
        per_pid = calls_per_process(metrics_dir)
        assert len(per_pid) == 2 and all(per_pid.values()), per_pid
        assert sum(per_pid.values()) == sent
        after = scrape(base)
    assert value(after, "mcp_tool_calls_total", tool="list_todos", outcome="ok") == sent
    assert value(after, "mcp_requests_total", method="tools/call", status="200") == sent
    assert value(after, "mcp_tool_call_duration_seconds_count", tool="list_todos") == sent
