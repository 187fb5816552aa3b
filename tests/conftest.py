"""Shared fixtures: an RSA key, a JWKS served over real HTTP, a token minter, a live server."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.cache import caches
from django.test import override_settings
from jwt.algorithms import RSAAlgorithm

from mcpauth.admission import floods, ratelimit
from mcpauth.caching import revocation
from mcpauth.identity import scopes, tenancy, tokens
from mcpauth.identity.tokens import Principal, TenantRef
from mcpauth.operations import seed_scope_mappings
from tests.servers import json_server, server_env, uvicorn_process

MCP_ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
#: The todo app's default scopes, as its data migration seeds them.
TODO_SCOPES = importlib.import_module("todos.migrations.0003_seed_scope_mappings").SCOPES


def seed_todo_scopes() -> None:
    """Re-seed the todo scopes (a transactional test's flush removes migration data)."""
    from django.apps import apps

    seed_scope_mappings(apps, TODO_SCOPES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    have = bool(os.environ.get("REDIS_URL")) and os.environ.get("DATABASE_URL", "").startswith(
        "postgres"
    )
    if have:
        return
    if os.environ.get("MCP_REQUIRE_SHARED_SERVICES"):
        raise pytest.UsageError("MCP_REQUIRE_SHARED_SERVICES is set but DATABASE_URL/REDIS_URL")
    skip = pytest.mark.skip(reason="needs PostgreSQL + Redis (set DATABASE_URL and REDIS_URL)")
    for item in items:
        if "needs_shared_services" in item.keywords:
            item.add_marker(skip)


# --- keys and the identity provider --------------------------------------------------------


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    def jwk(self) -> dict[str, Any]:
        data = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        data.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return data


def new_key(kid: str | None = None) -> SigningKey:
    return SigningKey(
        kid or f"k-{uuid.uuid4().hex[:8]}",
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return new_key("test-key-1")


@dataclass
class FakeIdP:
    """An issuer on loopback: OpenID metadata and a JWKS, with knobs for faults."""

    keys: list[SigningKey]
    url: str = ""
    jwks_fetches: int = 0
    #: every request, answered or not (a down IdP still sees the attempts)
    attempts: int = 0
    down: bool = False
    delay: float = 0.0
    #: serve OpenID metadata (off: only the JWKS, whose URL must then be configured)
    discovery: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issuer(self) -> str:
        return self.url

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}


@contextmanager
def serve_idp(state: FakeIdP) -> Iterator[FakeIdP]:
    """Serve ``state``'s OpenID metadata and JWKS on a loopback port (its ``url``)."""

    def route(path: str) -> tuple[int, Any]:
        with state.lock:
            state.attempts += 1
        if state.delay:
            time.sleep(state.delay)
        if state.down:
            return 503, None
        if path == "/.well-known/openid-configuration" and state.discovery:
            return 200, {"issuer": state.issuer, "jwks_uri": f"{state.url}/jwks.json"}
        if path == "/jwks.json":
            with state.lock:
                state.jwks_fetches += 1
            return 200, state.jwks()
        return 404, None

    with json_server(route) as url:
        state.url = url
        yield state


@pytest.fixture(scope="session")
def idp(rsa_key: SigningKey) -> Iterator[FakeIdP]:
    with serve_idp(FakeIdP(keys=[rsa_key])) as state:
        yield state


@pytest.fixture(scope="session")
def b_key() -> SigningKey:
    """The second issuer's signing key (another kid than ``rsa_key``'s)."""
    return new_key("b-key-1")


@pytest.fixture(scope="session")
def _idp_b(b_key: SigningKey) -> Iterator[FakeIdP]:
    with serve_idp(FakeIdP(keys=[b_key])) as state:
        yield state


@pytest.fixture
def idp_b(_idp_b: FakeIdP, b_key: SigningKey, idp: FakeIdP, settings: Any) -> FakeIdP:
    """A second issuer, with its own JWKS, configured next to ``idp`` (``MCPAUTH_ISSUER`` names
    both); its knobs start clean."""
    _idp_b.keys = [b_key]
    _idp_b.down = False
    _idp_b.delay = 0.0
    _idp_b.discovery = True
    settings.MCPAUTH_ISSUER = f"{idp.issuer} {_idp_b.issuer}"
    return _idp_b


@pytest.fixture
def mint_b(mint: Minter, idp_b: FakeIdP, b_key: SigningKey) -> Minter:
    """``mint`` for the second issuer: its ``iss``, signed with its key."""

    def _mint(**kwargs: Any) -> str:
        kwargs.setdefault("iss", idp_b.issuer)
        kwargs.setdefault("key", b_key)
        return mint(**kwargs)

    return _mint


BASE_URL = "http://127.0.0.1:8000"
RESOURCE = f"{BASE_URL}/mcp"


@pytest.fixture(scope="session", autouse=True)
def _auth_settings(idp: FakeIdP) -> Iterator[None]:
    """Every test runs against the loopback issuer unless it overrides settings."""
    with override_settings(
        MCPAUTH_BASE_URL=BASE_URL,
        MCPAUTH_ISSUER=idp.issuer,
        MCPAUTH_AUDIENCE="",
        MCPAUTH_JWKS_URL="",
        SCALEKIT_ENVIRONMENT_URL="",
        SCALEKIT_RESOURCE_ID="",
        MCPAUTH_TENANT_CLAIM="org_id",
        MCPAUTH_RATE_LIMIT="1000/m",
        MCPAUTH_UNAUTHENTICATED_RATE_LIMIT="1000/m",
    ):
        yield


@pytest.fixture(autouse=True)
def _fresh_state(idp: FakeIdP, rsa_key: SigningKey) -> Iterator[None]:
    """Per-process caches and the IdP's knobs start clean in every test."""
    idp.keys = [rsa_key]
    idp.down = False
    idp.discovery = True
    idp.delay = 0.0
    for clear in (
        tenancy.clear_cache,
        scopes.clear_cache,
        ratelimit.clear_cache,
        tokens.clear_cache,
        revocation.reset,
        floods.reset,
    ):
        clear()
    try:
        caches["ratelimit"].clear()
    except Exception:  # a test may have pointed the cache at a dead server
        pass
    yield


Minter = Callable[..., str]


@pytest.fixture
def mint(idp: FakeIdP, rsa_key: SigningKey) -> Minter:
    """``mint(scope=..., org_id=..., **claims)`` → a signed RS256 access token.

    ``headers=`` overrides JOSE headers, ``key=`` signs with another key, ``drop=`` removes
    claims, ``algorithm=``/``secret=`` allow hostile variants.
    """

    def _mint(
        *,
        scope: str | None = "todo:read todo:write",
        org_id: str | None = "acme",
        client_id: str = "client-1",
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        ttl: int = 300,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": idp.issuer,
            "aud": RESOURCE,
            "sub": f"user-of-{client_id}",
            "client_id": client_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        if scope is not None:
            payload["scope"] = scope
        if org_id is not None:
            payload["org_id"] = org_id
        payload.update(claims)
        for name in drop:
            payload.pop(name, None)
        signer = key or rsa_key
        hdrs = {"kid": signer.kid, "typ": "at+jwt"}
        hdrs.update(headers or {})
        return jwt.encode(payload, signer.private, algorithm="RS256", headers=hdrs)

    return _mint


# --- principals for service tests ----------------------------------------------------------

ALL_PERMS = frozenset(
    {"todos.view_todo", "todos.add_todo", "todos.change_todo", "todos.delete_todo"}
)


@pytest.fixture
def make_principal(db: None) -> Callable[..., Principal]:
    from mcpauth.models import Tenant

    def _make(
        tenant: str = "acme", perms: frozenset[str] = ALL_PERMS, subject: str = "alice"
    ) -> Principal:
        obj, _ = Tenant.objects.get_or_create(external_id=tenant)
        return Principal(
            client_id=f"client-{tenant}",
            subject=subject,
            tenant=TenantRef(obj.pk, tenant),
            scopes=frozenset({"todo:read", "todo:write"}),
            permissions=perms,
            token_id="test",
        )

    return _make


# --- fixed rate-limit windows ------------------------------------------------------------------


def window_of(value: str, ts: float, period: int = 60) -> int:
    """The rate-limit window a hit at ``ts`` counts in (``django_ratelimit.core._get_window``).

    Windows are fixed and their boundary is offset per key, so a burst that straddles one may be
    allowed up to twice the limit. Tests that count hits start where the window has room.
    """
    now = int(ts)
    end = now - (now % period) + (zlib.crc32(value.encode()) % period)
    return end + period if end < now else end


def seconds_left(value: str, period: int = 60) -> float:
    """How long the current window of ``value`` still counts (it counts through second ``end``)."""
    now = time.time()
    return window_of(value, now, period) + 1 - now


def client_id_with_room(prefix: str, period: int = 60, need: float = 30.0) -> str:
    """A client id like ``prefix-3`` whose current window lasts at least ``need`` more seconds."""
    for i in range(4 * period):
        candidate = f"{prefix}-{i}"
        if seconds_left(candidate, period) >= need:
            return candidate
    raise AssertionError(f"no client id with {need}s left in a {period}s window")


def ip_with_room(period: int = 60, need: float = 30.0) -> str:
    """A documentation-range client IP (sent as X-Forwarded-For) whose window has room."""
    for i in range(4 * period):
        candidate = f"198.51.100.{i % 250 + 1}" if i < 250 else f"203.0.113.{i % 250 + 1}"
        if seconds_left(candidate, period) >= need:
            return candidate
    raise AssertionError(f"no client IP with {need}s left in a {period}s window")


def wait_for_room(value: str, period: int = 60, need: float = 10.0) -> None:
    """Sleep into the next window of ``value`` if the current one ends within ``need`` seconds."""
    left = seconds_left(value, period)
    if left < need:
        time.sleep(left + 0.05)


# --- the live server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """The composed ASGI app under uvicorn in a thread, on a loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def application(self) -> Any:
        """The ASGI app to serve (subclasses wrap it)."""
        from mcpauth.asgi import build_application

        return build_application()

    def start(self) -> None:
        config = uvicorn.Config(
            self.application(),
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def _live_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[LiveServer]:
    server = LiveServer()
    server.start()
    yield server
    server.stop()
    with django_db_blocker.unblock():
        _drop_other_db_sessions()


def _drop_other_db_sessions() -> None:
    """Server threads keep persistent connections; end them so the test DB can be dropped."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_terminate_backend(pid) {others}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cursor.execute(f"SELECT count(*) {others}")
            if cursor.fetchone()[0] == 0:
                break
            time.sleep(0.05)


@pytest.fixture
def live(_live_server: LiveServer, transactional_db: None) -> LiveServer:
    """The running server; tests using it see committed data (transactional_db)."""
    seed_todo_scopes()
    return _live_server


#: The 2-worker zoo server's ``requestState`` key ring: a key of its own first (it seals), then
#: the key the in-process server seals with (derived from the test SECRET_KEY): retired there.
ZOO_STATE_KEY = "zoo-workers-state-key-" + "0123456789abcdef" * 3


@pytest.fixture(scope="session")
def zoo_workers(
    django_db_setup: None, django_db_blocker: Any, idp: FakeIdP, tmp_path_factory: Any
) -> Iterator[str]:
    """``uvicorn config.asgi`` with the test apps (the zoo), 2 workers sharing the test's
    PostgreSQL and Redis; its ``/mcp`` URL. Needs ``needs_shared_services``."""
    from django.conf import settings

    from mcpauth.conf import derived_state_key

    with django_db_blocker.unblock():
        env = server_env(
            idp.issuer,
            str(tmp_path_factory.mktemp("zoo-workers")),
            DJANGO_SETTINGS_MODULE="tests.settings",
            MCPAUTH_REQUEST_STATE_KEYS=f"{ZOO_STATE_KEY} {derived_state_key(settings.SECRET_KEY)}",
        )
    with uvicorn_process(free_port(), env, workers=2) as base:
        yield f"{base}/mcp"


def rpc(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        body["params"] = params
    return body


def reply_of(resp: Any) -> Any:
    """The JSON-RPC reply of an HTTP response: its JSON body, or the reply that ends its SSE
    stream (what a client accepting both may get for a call that runs a body)."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [
            json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:")
        ]
        return next(m for m in reversed(messages) if "result" in m or "error" in m)
    return resp.json()


def call_tool(name: str, arguments: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": arguments or {}}, id=id)


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    """``make bench``'s modules by name, imported as bench/run.py imports them (bench/ on
    sys.path); their signal handlers (a bench run's, ending its children) are undone
    afterwards."""
    path = str(Path(__file__).resolve().parent.parent / "bench")
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    sys.path.insert(0, path)
    try:
        names = ("attribution", "dms", "instructions", "load", "run", "summary")
        yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(path)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
