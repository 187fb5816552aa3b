"""Slow clients over real sockets: a body that trickles in, or never starts, is refused with 408
once ``MCPAUTH_BODY_TIMEOUT`` has passed, its connection is closed, and the refusal counts against
the address's refusal budget; a normal request is served meanwhile and afterwards.

Loopback only; every loop is bounded in count and in time.
"""

from __future__ import annotations

import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from audit.models import AuditEvent
from tests.conftest import MCP_ACCEPT, LiveServer, Minter, call_tool, ip_with_room

#: However slow the client, no connection in these tests lives longer than this.
HARD_LIMIT = 20.0


@dataclass
class Answer:
    status: int  # 0: no answer within HARD_LIMIT
    seconds: float  # from the headers sent to the answer's first byte
    closed: bool  # the server closed the connection after answering
    sent: int  # body bytes the client got out before the answer


def slow_post(
    url: str,
    *,
    token: str = "not-a-jwt",
    forwarded_for: str | None = None,
    length: int = 200,
    every: float | None = 0.4,
) -> Answer:
    """POST ``url`` announcing ``length`` body bytes, then send one byte per ``every`` seconds
    (``None``: none at all) until the server answers; read the answer to the end."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Authorization: Bearer {token}",
        f"Content-Length: {length}",
    ]
    if forwarded_for:
        lines.append(f"X-Forwarded-For: {forwarded_for}")
    with socket.create_connection((host, port), timeout=HARD_LIMIT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        started = time.monotonic()
        deadline = started + HARD_LIMIT
        sent = 0
        while time.monotonic() < deadline:
            wait = every if every is not None else 0.5
            readable, _, _ = select.select([sock], [], [], wait)
            if readable:
                break
            if every is not None and sent < length - 1:  # never complete the body
                try:
                    sock.sendall(b" ")
                    sent += 1
                except OSError:
                    break
        else:
            return Answer(0, time.monotonic() - started, False, sent)
        seconds = time.monotonic() - started
        data = b""
        closed = False
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else -1
    return Answer(status, seconds, closed, sent)


@pytest.fixture
def slow_limit(settings: Any) -> float:
    settings.MCPAUTH_BODY_TIMEOUT = 1.5
    settings.MCPAUTH_TRUSTED_PROXIES = 1
    return 1.5


def test_slow_and_silent_bodies_get_408_are_released_and_spend_the_ip_budget(
    live: LiveServer, mint: Minter, settings: Any, slow_limit: float
) -> None:
    settings.MCPAUTH_UNAUTHENTICATED_RATE_LIMIT = "3/m"
    address = ip_with_room()
    kinds = [0.4, 0.4, 0.4, 0.4, None, None]  # four trickle a byte at a time, two never start
    with ThreadPoolExecutor(max_workers=len(kinds) + 1) as pool:
        slow = [pool.submit(slow_post, live.url, forwarded_for=address, every=e) for e in kinds]
        time.sleep(0.3)
        # meanwhile a normal caller is served
        normal = httpx2.post(
            live.url, json=call_tool("list_todos"), headers={**MCP_ACCEPT, **bearer(mint())}
        )
        answers = [f.result(timeout=HARD_LIMIT + 5) for f in slow]
    assert normal.status_code == 200, normal.text
    # within the budget of 3: 408; the refusal that spends it and the later ones: 429
    assert sorted(a.status for a in answers) == [408, 408, 408, 429, 429, 429], answers
    for answer in answers:
        assert slow_limit - 0.2 <= answer.seconds < slow_limit + 8, answer  # not held forever
        assert answer.closed, answer  # the connection is released, not kept for the rest
    trickled = [a for a, every in zip(answers, kinds, strict=True) if every is not None]
    assert all(a.sent >= 2 for a in trickled)  # bytes did arrive, slowly
    rows = AuditEvent.objects.filter(client_ip=address)
    assert sorted(rows.values_list("status", "error_code")) == [
        (408, "body_timeout"),
        (408, "body_timeout"),
        (408, "body_timeout"),
        (429, "ip_throttled"),
    ]
    assert set(rows.values_list("outcome", flat=True)) == {"invalid_request", "rate_limited"}
    # the throttled address still gets in with a valid token, and a whole body
    resp = httpx2.post(
        live.url,
        json=call_tool("list_todos"),
        headers={**MCP_ACCEPT, **bearer(mint()), "x-forwarded-for": address},
    )
    assert resp.status_code == 200, resp.text


def test_a_body_that_arrives_in_time_is_served(
    live: LiveServer, mint: Minter, slow_limit: float
) -> None:
    """A body sent in a few pieces within the limit is read whole and served."""
    import json

    body = json.dumps(call_tool("list_todos")).encode()
    parts = urlsplit(live.url)
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{parts.port}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        f"Authorization: Bearer {mint()}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", parts.port or 80), timeout=HARD_LIMIT) as sock:
        sock.sendall(head)
        for i in range(0, len(body), max(1, len(body) // 3)):
            time.sleep(0.2)
            sock.sendall(body[i : i + max(1, len(body) // 3)])
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert b'"isError":false' in data


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
