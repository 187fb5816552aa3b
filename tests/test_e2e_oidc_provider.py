"""End to end against a real identity provider: panva's certified ``oidc-provider`` (Node).

``tests/oidc/provider.mjs`` runs oidc-provider on a loopback port with the client_credentials
grant and resource indicators, so its access tokens are RS256 JWTs with ``aud`` = the requested
resource and an ``org_id`` tenant claim. Our server discovers the provider's JWKS from its
OpenID metadata; nothing about the provider is hand-fed to it but the issuer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx2
import jwt
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from fastmcp import Client
from jwt.algorithms import RSAAlgorithm
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from audit.models import AuditEvent
from tests.conftest import (
    BASE_URL,
    MCP_ACCEPT,
    RESOURCE,
    SigningKey,
    call_tool,
    free_port,
    new_key,
    rpc,
    seed_todo_scopes,
)
from tests.servers import uvicorn_process
from todos.models import Todo

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
NODE = shutil.which("node")

if NODE is None:
    pytest.skip("node is not on PATH", allow_module_level=True)
if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
    pytest.skip(
        "tests/oidc/node_modules is missing: run `npm ci --prefix tests/oidc` (make test does)",
        allow_module_level=True,
    )

#: The machine clients built into provider.mjs: id → (secret, token endpoint auth method).
CLIENTS = {
    "mcp-rw": ("rw-secret-0123456789abcdef", "client_secret_basic"),
    "mcp-ro": ("ro-secret-0123456789abcdef", "client_secret_post"),
    "mcp-short": ("short-secret-0123456789abcdef", "client_secret_basic"),
    "mcp-globex": ("globex-secret-0123456789abcdef", "client_secret_basic"),
}
READ_WRITE = "todo:read todo:write"


def private_jwk(key: SigningKey) -> dict[str, Any]:
    data = json.loads(RSAAlgorithm.to_jwk(key.private))
    data.update({"kid": key.kid, "alg": "RS256", "use": "sig"})
    return data


@dataclass
class OIDCProvider:
    """``node tests/oidc/provider.mjs`` as a subprocess; restartable on the same port."""

    workdir: Path
    port: int = 0
    issuer: str = ""
    kids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the signing keys it was started with
    keys: list[SigningKey] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, keys: list[SigningKey]) -> None:
        self.keys = list(keys)
        jwks_path = self.workdir / "jwks.json"
        jwks_path.write_text(json.dumps({"keys": [private_jwk(k) for k in keys]}))
        jwks_path.chmod(0o600)
        self.starts += 1
        out_path = self.workdir / f"stdout-{self.starts}.log"
        err_path = self.workdir / f"stderr-{self.starts}.log"
        assert NODE is not None
        with out_path.open("wb") as out, err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [NODE, str(OIDC_DIR / "provider.mjs"), str(self.port)],
                cwd=OIDC_DIR,
                env={**os.environ, "OIDC_JWKS_PATH": str(jwks_path)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + 20
        while True:
            ready = self._ready_line(out_path)
            if ready:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"oidc-provider did not start:\n{out_path.read_text()}\n{err_path.read_text()}"
                )
            time.sleep(0.05)
        self.port, self.issuer, self.kids = ready["port"], ready["issuer"], ready["kids"]
        resp = httpx2.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5)
        resp.raise_for_status()
        self.metadata = resp.json()

    @staticmethod
    def _ready_line(path: Path) -> dict[str, Any] | None:
        for line in path.read_text().splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # oidc-provider's own notices go to stdout too
            if isinstance(msg, dict) and msg.get("ready"):
                return msg
        return None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self, keys: list[SigningKey]) -> None:
        self.stop()
        self.start(keys)

    def token_response(
        self, client_id: str, scope: str = READ_WRITE, resource: str | None = RESOURCE
    ) -> httpx2.Response:
        secret, method = CLIENTS[client_id]
        data = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            data["resource"] = resource
        auth: tuple[str, str] | None = None
        if method == "client_secret_post":
            data.update({"client_id": client_id, "client_secret": secret})
        else:
            auth = (client_id, secret)
        return httpx2.post(self.metadata["token_endpoint"], data=data, auth=auth, timeout=10)

    def token(self, client_id: str, scope: str = READ_WRITE, resource: str = RESOURCE) -> str:
        resp = self.token_response(client_id, scope, resource)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["token_type"].lower() == "bearer"
        return str(body["access_token"])


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    idp = OIDCProvider(workdir=tmp_path_factory.mktemp("oidc-provider"))
    idp.start([new_key("op-key-1")])
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture
def oidc(provider: OIDCProvider, live: Any, settings: Any) -> OIDCProvider:
    """The in-thread live server trusts the provider (and discovers its JWKS)."""
    settings.MCPAUTH_ISSUER = provider.issuer
    settings.MCPAUTH_JWKS_URL = ""
    settings.MCPAUTH_AUDIENCE = ""
    settings.MCPAUTH_TENANT_CLAIM = "org_id"
    return provider


@pytest.fixture(scope="module")
def provider_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    """A second, independent provider: its own port, issuer and signing key."""
    idp = OIDCProvider(workdir=tmp_path_factory.mktemp("oidc-provider-b"))
    idp.start([new_key("op-b-key-1")])
    try:
        yield idp
    finally:
        idp.stop()


def claims_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def post_tool(
    base: str, token: str, name: str, arguments: dict[str, Any] | None = None
) -> httpx2.Response:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    return httpx2.post(f"{base}/mcp", json=call_tool(name, arguments), headers=headers, timeout=10)


def audit_row(resp: httpx2.Response) -> AuditEvent:
    rows = list(AuditEvent.objects.filter(request_id=resp.headers["x-request-id"]))
    assert len(rows) == 1, rows
    return rows[0]


def assert_invalid_token(resp: httpx2.Response, reason: str) -> None:
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert resp.json()["error"]["data"]["error"] == "invalid_token"
    row = audit_row(resp)
    assert (row.outcome, row.status, row.error_code) == ("unauthenticated", 401, reason)


# --- the provider's tokens -----------------------------------------------------------------


def test_provider_issues_resource_bound_rs256_jwts(provider):
    token = provider.token("mcp-rw")
    header, claims = claims_of(token)
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"
    assert header["kid"] in provider.kids
    assert claims["iss"] == provider.issuer
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == claims["sub"] == "mcp-rw"
    assert claims["org_id"] == "acme"
    assert set(claims["scope"].split()) == {"todo:read", "todo:write"}
    # the read-only client cannot ask for more than it was registered for
    refused = provider.token_response("mcp-ro", scope=READ_WRITE)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"


# --- our server driven by those tokens -----------------------------------------------------


async def test_token_from_provider_creates_and_lists_todos_in_its_tenant(oidc, live):
    token = oidc.token("mcp-rw")
    async with Client(live.url, auth=token) as client:
        created = (await client.call_tool("create_todo", {"title": "from oidc-provider"})).data
        listed = (await client.call_tool("list_todos", {})).data
    assert [t["id"] for t in listed["todos"]] == [created["todo"]["id"]]
    todo = await Todo.all_tenants.select_related("tenant").aget()
    assert (todo.tenant.external_id, todo.created_by) == ("acme", "mcp-rw")
    row = await AuditEvent.objects.aget(tool="create_todo")
    assert (row.outcome, row.tenant, row.client_id) == ("ok", "acme", "mcp-rw")
    assert row.token_id == claims_of(token)[1]["jti"]

    # another organisation at the same provider sees none of acme's todos
    async with Client(live.url, auth=oidc.token("mcp-globex")) as client:
        assert (await client.call_tool("list_todos", {})).data["todos"] == []


def test_token_for_another_resource_is_refused(oidc, live):
    token = oidc.token("mcp-rw", resource="http://127.0.0.1:9999/other")
    assert claims_of(token)[1]["aud"] == "http://127.0.0.1:9999/other"
    resp = post_tool(live.base, token, "list_todos")
    assert_invalid_token(resp, "wrong_audience")
    assert "audience" in resp.json()["error"]["data"]["error_description"]


def test_token_without_a_resource_is_opaque_and_refused(oidc, live):
    resp = oidc.token_response("mcp-rw", resource=None)
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    assert token.count(".") == 0  # oidc-provider issues an opaque handle: no audience to check
    assert_invalid_token(post_tool(live.base, token, "list_todos"), "malformed")


def test_read_only_client_can_list_but_create_is_a_step_up_challenge(oidc, live):
    token = oidc.token("mcp-ro", scope="todo:read")
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    listed = httpx2.post(live.url, json=rpc("tools/list", {}), headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert {t["name"] for t in listed.json()["result"]["tools"]} == {"list_todos", "get_todo"}
    ok = post_tool(live.base, token, "list_todos")
    assert ok.status_code == 200 and ok.json()["result"]["structuredContent"]["todos"] == []

    resp = post_tool(live.base, token, "create_todo", {"title": "not allowed"})
    assert resp.status_code == 403, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", ')
    assert ', scope="todo:write", ' in challenge
    assert challenge.endswith(
        f'resource_metadata="{BASE_URL}/.well-known/oauth-protected-resource/mcp"'
    )
    assert resp.json()["error"]["data"]["required_scopes"] == ["todo:write"]
    row = audit_row(resp)
    assert (row.outcome, row.status, row.client_id, row.error_code) == (
        "denied",
        403,
        "mcp-ro",
        "insufficient_scope",
    )
    assert not Todo.all_tenants.exists()


def test_short_lived_token_works_then_expires(oidc, live, settings):
    settings.MCPAUTH_LEEWAY_SECONDS = 0
    # fetch the provider's keys first, so the 2 s token's first use is only a verification
    assert post_tool(live.base, oidc.token("mcp-rw"), "list_todos").status_code == 200
    resp = oidc.token_response("mcp-short")
    assert resp.status_code == 200 and resp.json()["expires_in"] == 2
    token = resp.json()["access_token"]
    exp = claims_of(token)[1]["exp"]
    assert post_tool(live.base, token, "list_todos").status_code == 200
    time.sleep(max(0.0, exp - time.time()) + 0.3)
    assert_invalid_token(post_tool(live.base, token, "list_todos"), "expired")


def test_key_rotation_new_key_accepted_removed_key_refused(oidc, live, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 1
    old = oidc.token("mcp-rw")
    first = time.monotonic()
    assert post_tool(live.base, old, "list_todos").status_code == 200  # keys fetched

    rotated = new_key("op-key-2")
    oidc.restart([rotated])  # same issuer and port, the old key is gone
    new = oidc.token("mcp-rw")
    assert claims_of(new)[0]["kid"] == "op-key-2" != claims_of(old)[0]["kid"]
    time.sleep(max(0.0, 1.1 - (time.monotonic() - first)))  # past the refetch window

    assert post_tool(live.base, new, "list_todos").status_code == 200  # unknown kid → refetch
    assert_invalid_token(post_tool(live.base, old, "list_todos"), "unknown_key")


# --- the mcp SDK discovers everything by itself --------------------------------------------


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


async def test_mcp_sdk_client_credentials_discovers_provider_and_calls_tools(
    provider, transactional_db, tmp_path
):
    """The SDK gets only the MCP URL, the client's credentials and scopes (and, as it
    recommends, the issuer they belong to, which pins but does not locate the provider)."""
    await sync_to_async(seed_todo_scopes)()
    # The SDK checks that our metadata's `resource` is the URL it connected to, so this
    # server's BASE_URL must be its real address: a dedicated process.
    port = free_port()
    env = {
        "DEBUG": "0",
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": database_url(),
        "BASE_URL": f"http://127.0.0.1:{port}",
        "MCPAUTH_ISSUER": provider.issuer,
        "MCPAUTH_TENANT_CLAIM": "org_id",
        "MCPAUTH_AUDIENCE": "",
        "MCPAUTH_JWKS_URL": "",
        "SCALEKIT_ENVIRONMENT_URL": "",
        "SCALEKIT_RESOURCE_ID": "",
    }
    trail: list[tuple[str, str, int]] = []
    challenges: list[str] = []
    token_requests: list[dict[str, list[str]]] = []
    token_endpoint = provider.metadata["token_endpoint"]

    async def on_response(response: httpx2.Response) -> None:
        request = response.request
        trail.append((request.method, str(request.url), response.status_code))
        if "www-authenticate" in response.headers:
            challenges.append(response.headers["www-authenticate"])
        if str(request.url) == token_endpoint:
            token_requests.append(parse_qs(request.content.decode()))

    with uvicorn_process(port, env) as base:
        mcp_url = f"{base}/mcp"
        auth = ClientCredentialsOAuthProvider(
            server_url=mcp_url,
            storage=MemoryStorage(),
            client_id="mcp-rw",
            client_secret=CLIENTS["mcp-rw"][0],
            scope=READ_WRITE,
            issuer=provider.issuer,
        )
        async with (
            httpx2.AsyncClient(
                auth=auth, timeout=30, event_hooks={"response": [on_response]}
            ) as http,
            streamable_http_client(mcp_url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = await session.list_tools()
            created = await session.call_tool("create_todo", {"title": "discovered"})
            listed = await session.call_tool("list_todos", {})

    assert not created.is_error, created
    todo_id = created.structured_content["todo"]["id"]
    assert [t["id"] for t in listed.structured_content["todos"]] == [todo_id]

    # 401 → our protected-resource metadata → the provider's metadata → a token → retry
    prm = f"{base}/.well-known/oauth-protected-resource/mcp"
    assert trail[:2] == [("POST", mcp_url, 401), ("GET", prm, 200)]
    assert trail[2][:2] == ("GET", f"{provider.issuer}/.well-known/oauth-authorization-server")
    assert trail[2][2] == 200
    assert trail[3:5] == [("POST", token_endpoint, 200), ("POST", mcp_url, 200)]
    assert f'resource_metadata="{prm}"' in challenges[0]
    assert all(r["resource"] == [mcp_url] for r in token_requests)
    assert all(r["grant_type"] == ["client_credentials"] for r in token_requests)

    # The MCP scope-selection rule: the SDK asks for the scopes our bare 401 names, which are
    # every scope of the scope map, so tools/list shows every tool at once.
    assert len(token_requests) == 1
    assert set(token_requests[0]["scope"][0].split()) == {"todo:read", "todo:write"}
    assert {t.name for t in tools.tools} == {
        "create_todo",
        "list_todos",
        "get_todo",
        "update_todo",
        "delete_todo",
    }
    assert ("POST", mcp_url, 403) not in trail

    todo = await Todo.all_tenants.select_related("tenant").aget()
    assert (str(todo.pk), todo.tenant.external_id, todo.created_by) == (todo_id, "acme", "mcp-rw")
    rows = AuditEvent.objects.filter(client_id="mcp-rw", tool="create_todo")
    assert [r.outcome async for r in rows.order_by("created_at", "id")] == ["ok"]


# --- two real providers as two issuers (issue 16) ------------------------------------------------


def test_two_providers_are_two_issuers_with_their_own_keys_and_tenants(
    provider, provider_b, live, settings
):
    """Both providers issue tokens for client ``mcp-rw`` with ``org_id`` = acme: the same
    client id and tenant claim value, from two issuers, are two clients and two tenants."""
    settings.MCPAUTH_ISSUER = f"{provider.issuer} {provider_b.issuer}"
    settings.MCPAUTH_JWKS_URL = ""
    settings.MCPAUTH_AUDIENCE = ""
    settings.MCPAUTH_TENANT_CLAIM = "org_id"
    a, b = provider.token("mcp-rw"), provider_b.token("mcp-rw")
    assert claims_of(a)[1]["org_id"] == claims_of(b)[1]["org_id"] == "acme"
    made_a = post_tool(live.base, a, "create_todo", {"title": "A's"})
    made_b = post_tool(live.base, b, "create_todo", {"title": "B's"})
    assert made_a.status_code == made_b.status_code == 200
    for token, title in ((a, "A's"), (b, "B's")):
        listed = post_tool(live.base, token, "list_todos").json()["result"]["structuredContent"]
        assert [t["title"] for t in listed["todos"]] == [title]
    assert (audit_row(made_a).issuer, audit_row(made_b).issuer) == (
        provider.issuer,
        provider_b.issuer,
    )
    owners = set(Todo.all_tenants.values_list("title", "tenant__issuer", "tenant__external_id"))
    assert owners == {("A's", provider.issuer, "acme"), ("B's", provider_b.issuer, "acme")}

    # B's token re-signed with A's key (A's kid) still claims B: B's JWKS never served that key
    header, claims = claims_of(b)
    forged = jwt.encode(
        claims,
        provider.keys[0].private,
        algorithm="RS256",
        headers={**header, "kid": provider.keys[0].kid},
    )
    assert_invalid_token(post_tool(live.base, forged, "list_todos"), "unknown_key")
    assert audit_row(post_tool(live.base, forged, "list_todos")).tenant == ""
