"""The official MCP conformance suite (``@modelcontextprotocol/conformance``) against our server.

``tests/conformance`` pins the suite and, as an optional Linux x64 dependency, the Node 22 it
needs (``fs.globSync``); elsewhere the system ``node`` is used if it is new enough. The suite's
server mode drives a URL with the TypeScript SDK client, which has no bearer-token option, so it
talks to :class:`BearerProxy`, a loopback reverse proxy that adds ``Authorization: Bearer`` and
forwards everything else, ``Host`` and ``Origin`` included, unchanged to the live server.

The suite runs once per protocol era, ``--spec-version 2025-11-25`` (the handshake) and
``--spec-version 2026-07-28`` (``server/discover``, per-request envelopes), each against its own
``tests/conformance/expected-failures-<version>.yml``: the suite's own baseline format
(``server:``, usable with ``conformance server --expected-failures``) plus a ``reasons:`` map
that the suite ignores. The test holds each list honest both ways: every scenario not listed
must pass, and every listed one must still fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
import yaml

from tests.conftest import LiveServer, Minter, free_port
from tests.servers import require_node_tool

CONF_DIR = Path(__file__).resolve().parent / "conformance"
CLI = CONF_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SPEC_VERSIONS = ("2025-11-25", "2026-07-28")

#: The whole suite runs once, in about 3 s; the bound only stops a wedged run.
SUITE_TIMEOUT = 180
#: ``<output-dir>/server-<scenario>-<ISO timestamp with dashes>/checks.json``
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


NODE: Path = require_node_tool(CONF_DIR, CLI, (22, 0), "the MCP conformance suite")


# --- the bearer-token proxy ----------------------------------------------------------------

#: Hop-by-hop headers (RFC 9110 §7.6.1) are per connection and never forwarded. Content-Length
#: is recomputed from the body actually sent.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class BearerProxy:
    """An ASGI reverse proxy that adds ``Authorization: Bearer <token>`` to every request.

    Why this shape: uvicorn parses each request (keep-alive, chunked bodies) and httpx2 sends it
    on, so the token is added per request. A byte-level TCP splice could not do that without
    re-implementing HTTP/1.1 framing, and a generic forward proxy would rewrite ``Host``. Here the
    client's ``Host`` and ``Origin`` are forwarded verbatim (httpx2 keeps an explicit ``Host``
    header), because the ``dns-rebinding-protection`` scenario sends a hostile ``Host``/``Origin``
    and must see our server's own refusal, not the proxy's. Responses are streamed back raw
    (still encoded, status and headers as sent) so SSE would pass through unbuffered.
    """

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token
        self._client: httpx2.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = httpx2.AsyncClient(timeout=30, follow_redirects=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert self._client is not None
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        # Optional whitespace around a field value is not part of it (RFC 9110 §5.5); uvicorn
        # keeps it, and the upstream client refuses to send it, so it is stripped here.
        headers = [
            (name, value.strip(b" \t"))
            for name, value in scope["headers"]
            if name.lower() not in HOP_BY_HOP | {b"authorization", b"content-length"}
        ]
        headers.append((b"authorization", f"Bearer {self.token}".encode()))
        url = self.upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        # A bare Request: no client default headers (User-Agent, Accept-Encoding…) are added.
        request = httpx2.Request(scope["method"], url, headers=headers, content=body)
        response = await self._client.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value)
                        for name, value in response.headers.raw
                        if name.lower() not in HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


class ProxyServer:
    """:class:`BearerProxy` under uvicorn in a thread, on a loopback port."""

    def __init__(self, upstream: str, token: str) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            BearerProxy(upstream, token),
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            server_header=False,  # the upstream's Server and Date headers are forwarded as is
            date_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def __enter__(self) -> ProxyServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the proxy did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


# --- running the suite ---------------------------------------------------------------------


def expected_failures(version: str) -> Path:
    return CONF_DIR / f"expected-failures-{version}.yml"


def load_expected(version: str) -> tuple[set[str], dict[str, str]]:
    data = yaml.safe_load(expected_failures(version).read_text())
    return set(data.get("server") or []), dict(data.get("reasons") or {})


def server_scenarios(version: str) -> list[str]:
    """The suite's server scenarios for ``version``, from ``conformance list --server``."""
    out = subprocess.run(
        [str(NODE), str(CLI), "list", "--server", "--spec-version", version],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [line.strip()[2:].split(" [")[0] for line in out.splitlines() if line.startswith("  - ")]


def run_suite(url: str, output_dir: Path, version: str) -> subprocess.CompletedProcess[str]:
    """Every server scenario of ``version`` (``--suite all``: active and pending)."""
    env = {**os.environ, "NO_COLOR": "1"}
    try:
        return subprocess.run(
            [
                str(NODE),
                str(CLI),
                "server",
                "--suite",
                "all",
                "--spec-version",
                version,
                "--url",
                url,
                "--expected-failures",
                str(expected_failures(version)),
                "--output-dir",
                str(output_dir / "results"),
            ],
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT,
            env=env,
            cwd=output_dir,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the conformance suite did not finish in {SUITE_TIMEOUT}s:\n{exc.stdout}")


def read_results(results: Path) -> dict[str, list[dict[str, Any]]]:
    """``{scenario: checks}`` from the suite's output directory."""
    found: dict[str, list[dict[str, Any]]] = {}
    for checks in sorted(results.glob("server-*/checks.json")):
        match = RESULT_DIR.match(checks.parent.name)
        assert match, f"unexpected result directory {checks.parent.name}"
        assert match["scenario"] not in found, f"{match['scenario']} ran twice"
        found[match["scenario"]] = json.loads(checks.read_text())
    return found


def failed_checks(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checks that make a scenario fail: FAILURE or WARNING, as in the suite's baseline."""
    return [c for c in checks if c.get("status") in {"FAILURE", "WARNING"}]


@pytest.fixture
def proxy(live: LiveServer, mint: Minter, settings: Any) -> Iterator[ProxyServer]:
    with ProxyServer(live.base, mint(ttl=900)) as server:
        # the suite's client is a browser-like peer at the proxy's origin
        settings.MCPAUTH_ALLOWED_ORIGINS = f"http://127.0.0.1:{server.port}"
        yield server


@pytest.mark.parametrize("version", SPEC_VERSIONS)
def test_conformance_server_scenarios(proxy: ProxyServer, tmp_path: Path, version: str) -> None:
    expected, reasons = load_expected(version)
    scenarios = server_scenarios(version)
    assert set(reasons) == expected, "every expected failure needs a reason, and only those"
    assert expected <= set(scenarios), f"unknown scenarios listed: {expected - set(scenarios)}"

    proc = run_suite(proxy.url, tmp_path, version)
    report = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    results = read_results(tmp_path / "results")
    assert set(results) == set(scenarios), report

    unexpected = {
        name: [
            f"{c['status']} {c['id']}: {c.get('errorMessage') or c.get('details')}"
            for c in failed_checks(checks)
        ]
        for name, checks in results.items()
        if name not in expected and failed_checks(checks)
    }
    stale = {name for name in expected if not failed_checks(results[name])}
    assert not unexpected, f"scenarios that should pass failed: {unexpected}\n{report}"
    assert not stale, f"listed as failing but now pass (update the baseline): {stale}"
    assert proc.returncode == 0, report  # the suite's own baseline check agrees

    # The DNS-rebinding refusal must be our Host check (403), not a missing token (401).
    by_id = {c["id"]: c for c in results["dns-rebinding-protection"]}
    rejected = by_id["localhost-host-rebinding-rejected"]["details"]
    assert rejected["statusCode"] == 403, rejected
    assert "host" in rejected["body"]["error"]["message"].lower(), rejected
    accepted = by_id["localhost-host-valid-accepted"]["details"]
    assert accepted["statusCode"] == 200, accepted
    result = accepted["body"]["result"]
    assert result.get("serverInfo") or result["_meta"]["io.modelcontextprotocol/serverInfo"]

    if version == "2026-07-28":
        # server-stateless fails only for lack of the suite's diagnostic fixture tools
        stateless = failed_checks(results["server-stateless"])
        assert stateless and all(
            (c.get("errorMessage") or "").startswith("Not testable") for c in stateless
        ), stateless
        passed = [c for c in results["server-stateless"] if c.get("status") == "SUCCESS"]
        assert len(passed) >= 21, len(passed)


def test_proxy_forwards_host_and_origin_unchanged(live: LiveServer, mint: Minter) -> None:
    """The proxy itself must not mask a bad Host or Origin (nor invent a good one)."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "proxy-check", "version": "1"},
        },
    }
    accept = {"accept": "application/json, text/event-stream"}
    with ProxyServer(live.base, mint()) as server:
        ok = httpx2.post(server.url, json=init, headers=accept, timeout=10)
        assert ok.status_code == 200, ok.text
        assert len(ok.headers.get_list("date")) == 1  # the upstream's, not one added by us
        assert ok.headers["x-request-id"]  # response headers come through
        bad_host = httpx2.post(
            server.url, json=init, headers={**accept, "host": "evil.example.com"}, timeout=10
        )
        assert bad_host.status_code == 403, bad_host.text
        bad_origin = httpx2.post(
            server.url,
            json=init,
            headers={**accept, "origin": "http://evil.example.com"},
            timeout=10,
        )
        assert bad_origin.status_code == 403, bad_origin.text
