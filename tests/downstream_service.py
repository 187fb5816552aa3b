"""A downstream service on loopback that checks what it receives, as a real one would.

Each route family is one downstream of the tests and checks its own credential:

* ``/crm/…`` (``api_key``): ``X-API-Key`` must be one of ``api_keys``;
* ``/tcrm/…`` (``api_key``, ``per_tenant``): ``Authorization: Bearer <key>``, one of ``api_keys``;
* ``/partner/…`` (``client_credentials``), ``/ledger/…`` (``token_exchange``), ``/mesh/…``
  (``forward``): a bearer JWT signed by a trusted issuer (its JWKS fetched over HTTP), unexpired,
  whose ``aud`` names ``<base>/<family>``; after an exchange (``/ledger``) the ``act`` claim must
  name the exchanging client, and the client-credentials token (``/partner``) must have none;
* ``/open/…``: no credential;
* ``/slow/…``: answers only once :attr:`DownstreamService.gate` is set (at most 20 s), after
  setting :attr:`DownstreamService.arrived`.

Every request is kept in :attr:`DownstreamService.seen` (path, query, the verdict, the checked
claims, a fingerprint of any ``Authorization`` value) for the tests to compare with the audit.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from typing import Any
from urllib.parse import urlsplit

import jwt
from django.core.management import call_command

from audit.models import AuditEvent
from mcpauth.identity import scopes
from mcpauth.models import ScopeMapping

JWT_FAMILIES = ("partner", "ledger", "mesh")


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass
class DownstreamService:
    base: str = ""
    #: API key -> label (the tenant it belongs to, or "shared").
    api_keys: dict[str, str] = field(default_factory=dict)
    #: issuer -> its JWKS URL: the issuers whose tokens are accepted.
    issuers: dict[str, str] = field(default_factory=dict)
    #: The client that exchanges tokens (the ``act`` claim after an exchange).
    actor: str = "mcp-server"
    seen: list[dict[str, Any]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)
    #: Set (an HTTP status) to answer every request with it after checking.
    fail_with: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _jwks: dict[str, jwt.PyJWKClient] = field(default_factory=dict)

    def url(self, family: str) -> str:
        return f"{self.base}/{family}"

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
        self.gate.clear()
        self.arrived.clear()
        self.fail_with = 0

    def requests_to(self, family: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.seen if r["family"] == family]

    # --- checks --------------------------------------------------------------------------------

    def _claims(self, token: str, family: str) -> dict[str, Any]:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        if issuer not in self.issuers:
            raise PermissionError("untrusted issuer")
        client = self._jwks.setdefault(issuer, jwt.PyJWKClient(self.issuers[issuer]))
        key = client.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=["RS256"],
            audience=self.url(family),
            issuer=issuer,
            options={"require": ["exp", "aud", "iss", "sub"]},
        )
        act = claims.get("act")
        if family == "ledger" and not (isinstance(act, dict) and act.get("sub") == self.actor):
            raise PermissionError("an exchanged token must name its actor (act)")
        if family == "partner" and act is not None:
            raise PermissionError("a client-credentials token acts for nobody")
        return claims

    def check(self, family: str, headers: dict[str, str]) -> dict[str, Any]:
        """What the request proves (raise ``PermissionError`` naming what is wrong)."""
        auth = headers.get("authorization", "")
        if family == "crm":
            label = self.api_keys.get(headers.get("x-api-key", ""))
            if label is None:
                raise PermissionError("bad api key")
            return {"key": label}
        if family == "tcrm":
            scheme, _, key = auth.partition(" ")
            label = self.api_keys.get(key) if scheme == "Bearer" else None
            if label is None:
                raise PermissionError("bad api key")
            return {"key": label}
        if family in JWT_FAMILIES:
            scheme, _, token = auth.partition(" ")
            if scheme != "Bearer" or not token:
                raise PermissionError("no bearer token")
            try:
                claims = self._claims(token, family)
            except jwt.PyJWTError as exc:
                raise PermissionError(f"invalid token: {type(exc).__name__}") from None
            keep = ("sub", "aud", "act", "client_id", "org_id", "scope", "exp", "jti", "iss")
            return {k: claims[k] for k in keep if k in claims}
        if family in ("open", "slow"):
            return {}
        raise LookupError(family)


@contextmanager
def serve(service: DownstreamService) -> Iterator[DownstreamService]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            parts = urlsplit(self.path)
            family = parts.path.strip("/").split("/", 1)[0]
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            entry: dict[str, Any] = {
                "family": family,
                "method": self.command,
                "path": parts.path,
                "query": parts.query,
                "body": body.decode(errors="replace"),
                "auth_fingerprint": fingerprint(headers["authorization"])
                if "authorization" in headers
                else None,
                "header_names": sorted(headers),
            }
            try:
                proof = service.check(family, headers)
                status, payload = 200, {"ok": True, "path": parts.path, **proof}
                entry["verdict"] = "ok"
            except PermissionError as exc:
                status, payload = 401, {"error": str(exc)}
                entry["verdict"] = str(exc)
            except LookupError:
                status, payload = 404, {"error": "no such route"}
                entry["verdict"] = "404"
            entry["proof"] = payload
            with service.lock:
                service.seen.append(entry)
            if family == "slow":
                service.arrived.set()
                service.gate.wait(20)
            if service.fail_with and status == 200:
                status, payload = service.fail_with, {"error": "failing on purpose"}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    service.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield service
    finally:
        service.gate.set()
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + 5
        while thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)


# --- calling the tools of tests/outbound over /mcp ---------------------------------------------


@dataclass
class ToolReply:
    status: int
    request_id: str
    result: dict[str, Any]

    @property
    def is_error(self) -> bool:
        return bool(self.result.get("isError"))

    @property
    def text(self) -> str:
        content = self.result.get("content") or [{}]
        return str(content[0].get("text", ""))

    @property
    def data(self) -> Any:
        structured = self.result.get("structuredContent")
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]
        return structured


def call_tool_over_mcp(
    url: str, token: str, name: str, arguments: dict[str, Any] | None = None, timeout: float = 30
) -> ToolReply:
    """One ``tools/call`` over ``/mcp`` on a fresh connection."""
    import httpx2

    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments or {}},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "authorization": f"Bearer {token}",
    }
    with httpx2.Client(timeout=timeout) as http:
        resp = http.post(url, json=body, headers=headers)
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
        payload = json.loads(data[-1])
    else:
        payload = resp.json()
    result = payload.get("result") or {"error": payload.get("error")}
    return ToolReply(resp.status_code, resp.headers.get("x-request-id", ""), result)


# --- shared by the downstream tests ------------------------------------------------------------

#: The tests' MCPAUTH_ENCRYPTION_KEYS entry.
KEY = "test-encryption-key-0123456789-abcdefghij"


def grant_outbound_tools() -> None:
    """``todo:read`` also grants the outbound test tools (the default minted tokens have it)."""
    from django.contrib.auth.models import Permission

    mapping = ScopeMapping.objects.get(scope="todo:read")
    mapping.permissions.add(
        Permission.objects.get(content_type__app_label="outbound", codename="add_receipt")
    )
    scopes.clear_cache()


def set_secret(name: str, value: str, tenant: str | None = None) -> str:
    out = StringIO()
    args = ["downstreams", "set-secret", name] + (["--tenant", tenant] if tenant else [])
    call_command(*args, stdin=StringIO(value + "\n"), stdout=out)
    return out.getvalue()


def rows_of(request_id: str) -> tuple[AuditEvent, list[AuditEvent]]:
    rows = list(AuditEvent.objects.filter(request_id=request_id).order_by("id"))
    calls = [r for r in rows if not r.method.startswith("outbound/")]
    assert len(calls) == 1, rows
    return calls[0], [r for r in rows if r.method.startswith("outbound/")]


def no_secret_anywhere(*secrets: str) -> None:
    """No audit row holds any of ``secrets``, in any column."""
    for row in AuditEvent.objects.all():
        text = json.dumps(
            [row.arguments, row.error_message, row.error_code, row.method, row.tool], default=str
        )
        for secret in secrets:
            assert secret not in text, row
