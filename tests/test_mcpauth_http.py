"""The auth pipeline over real HTTP: uvicorn on loopback, hostile tokens, JWKS faults, scopes,
tenants. Every refusal must be a clean 401/403 with one audit row, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from mcpauth.models import ClientBinding, Tenant
from tests.conftest import MCP_ACCEPT, RESOURCE, SigningKey, call_tool, new_key, rpc
from todos.models import Todo

METADATA_URL = "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"
ALL_TOOLS = {"create_todo", "list_todos", "get_todo", "update_todo", "delete_todo"}
READ_TOOLS = {"list_todos", "get_todo"}
NO_ID = "00000000-0000-0000-0000-000000000000"

HeaderList = list[tuple[str, str | bytes]]


# --- HTTP helpers ----------------------------------------------------------------------------


def post(live: Any, body: Any, headers: HeaderList = (), timeout: float = 10) -> httpx2.Response:
    with httpx2.Client(timeout=timeout) as http:
        return http.post(
            live.url,
            content=json.dumps(body).encode(),
            headers=[*MCP_ACCEPT.items(), *headers],
        )


def bearer(token: str, scheme: str = "Bearer") -> HeaderList:
    return [("authorization", f"{scheme} {token}")]


def call(live: Any, token: str, tool: str, args: dict[str, Any] | None = None) -> httpx2.Response:
    return post(live, call_tool(tool, args), bearer(token))


def rows_for(resp: httpx2.Response) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(request_id=resp.headers["x-request-id"]))


def only_row(resp: httpx2.Response) -> AuditEvent:
    rows = rows_for(resp)
    assert len(rows) == 1, rows
    return rows[0]


def tool_result(resp: httpx2.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()["result"]


# --- forging tokens ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode())
    return b64url(json.dumps(value, separators=(",", ":")).encode())


_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def forge(
    header: dict[str, Any] | list[Any],
    payload: Any,
    *,
    key: SigningKey | None = None,
    sign_alg: str = "RS256",
    secret: bytes | None = None,
    signature: bytes | None = None,
) -> str:
    """A compact JWS built by hand, so the header and signature can be anything."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    msg = signing_input.encode()
    if signature is None:
        if secret is not None:
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
            signature = hmac.new(secret, msg, digest[sign_alg]).digest()
        elif key is not None:
            algo = _HASHES[sign_alg[2:]]()
            if sign_alg.startswith("PS"):
                pad: Any = padding.PSS(padding.MGF1(algo), padding.PSS.DIGEST_LENGTH)
            else:
                pad = padding.PKCS1v15()
            signature = key.private.sign(msg, pad, algo)
        else:
            signature = b""
    return f"{signing_input}.{b64url(signature)}"


@dataclass
class Kit:
    """What a hostile-token builder gets: the minter, our key, an attacker's key, the issuer."""

    mint: Callable[..., str]
    key: SigningKey
    attacker: SigningKey
    issuer: str

    @property
    def kid(self) -> str:
        return self.key.kid

    @property
    def public_pem(self) -> bytes:
        return self.key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "aud": RESOURCE,
            "sub": "mallory",
            "client_id": "client-1",
            "org_id": "acme",
            "scope": "todo:read todo:write",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        base.update(over)
        return base

    def header(self, **over: Any) -> dict[str, Any]:
        return {"alg": "RS256", "typ": "JWT", "kid": self.kid, **over}


@pytest.fixture(scope="session")
def attacker() -> SigningKey:
    return new_key("attacker-key")


@pytest.fixture
def kit(mint: Callable[..., str], rsa_key: SigningKey, attacker: SigningKey, idp: Any) -> Kit:
    return Kit(mint=mint, key=rsa_key, attacker=attacker, issuer=idp.issuer)


def _tampered(k: Kit) -> str:
    header, _payload, sig = k.mint(org_id="acme").split(".")
    return f"{header}.{segment(k.claims(org_id='other-tenant'))}.{sig}"


def _spliced(k: Kit) -> str:
    header, payload, _ = k.mint(scope="todo:read").split(".")
    return f"{header}.{payload}.{k.mint(scope='todo:write').split('.')[2]}"


def _stripped(k: Kit) -> str:
    header, payload, _ = k.mint().split(".")
    return f"{header}.{payload}."


def _jwe_shaped(k: Kit) -> str:
    head = segment({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": k.kid, "typ": "JWT"})
    return ".".join([head, *(b64url(uuid.uuid4().bytes) for _ in range(4))])


def _now() -> int:
    return int(time.time())


Builder = Callable[[Kit], str | HeaderList]

#: (id, builder, the reason the audit row must carry). A builder returns a token (sent as
#: ``Authorization: Bearer <token>``) or the raw header list to send.
HOSTILE: list[tuple[str, Builder, str]] = [
    # --- algorithm confusion
    ("alg-none", lambda k: forge(k.header(alg="none"), k.claims()), "disallowed_alg"),
    ("alg-None", lambda k: forge(k.header(alg="None"), k.claims()), "disallowed_alg"),
    ("alg-NONE", lambda k: forge(k.header(alg="NONE"), k.claims()), "disallowed_alg"),
    (
        "alg-none-no-kid-no-typ",
        lambda k: forge({"alg": "none"}, k.claims(), signature=b""),
        "disallowed_alg",
    ),
    (
        "hs256-signed-with-public-pem",
        lambda k: forge(k.header(alg="HS256"), k.claims(), secret=k.public_pem, sign_alg="HS256"),
        "disallowed_alg",
    ),
    (
        "hs512-signed-with-public-pem",
        lambda k: forge(k.header(alg="HS512"), k.claims(), secret=k.public_pem, sign_alg="HS512"),
        "disallowed_alg",
    ),
    (
        "hs256-signed-with-jwk-json",
        lambda k: forge(
            k.header(alg="HS256"),
            k.claims(),
            secret=json.dumps(k.key.jwk()).encode(),
            sign_alg="HS256",
        ),
        "disallowed_alg",
    ),
    ("alg-not-a-string", lambda k: forge(k.header(alg=["RS256"]), k.claims()), "disallowed_alg"),
    (
        "es256-header-on-rsa-key",
        lambda k: forge(k.header(alg="ES256"), k.claims(), key=k.key),
        "disallowed_alg",
    ),
    (
        "ps256-header-rs256-signature",
        lambda k: forge(k.header(alg="PS256"), k.claims(), key=k.key, sign_alg="RS256"),
        "bad_signature",
    ),
    # --- key ids and key-carrying headers
    ("kid-not-in-jwks", lambda k: k.mint(headers={"kid": "rotated-away"}), "unknown_key"),
    ("kid-path-traversal", lambda k: k.mint(headers={"kid": "../../etc/passwd"}), "unknown_key"),
    (
        "kid-sql-injection",
        lambda k: k.mint(headers={"kid": "x' OR '1'='1'; DROP TABLE mcpauth_tenant; --"}),
        "unknown_key",
    ),
    ("kid-not-a-string", lambda k: forge(k.header(kid=1), k.claims(), key=k.key), "malformed"),
    ("kid-oversized", lambda k: k.mint(headers={"kid": "k" * 300}), "malformed"),
    (
        "jku-attacker-key",
        lambda k: k.mint(key=k.attacker, headers={"jku": "https://attacker.example/jwks.json"}),
        "unknown_key",
    ),
    (
        "jku-attacker-key-our-kid",
        lambda k: k.mint(
            key=k.attacker, headers={"kid": k.kid, "jku": "https://attacker.example/jwks.json"}
        ),
        "bad_signature",
    ),
    (
        "x5u-attacker-key",
        lambda k: k.mint(key=k.attacker, headers={"x5u": "https://attacker.example/cert.pem"}),
        "unknown_key",
    ),
    (
        "embedded-jwk-attacker-key",
        lambda k: k.mint(key=k.attacker, headers={"jwk": k.attacker.jwk()}),
        "unknown_key",
    ),
    (
        "embedded-jwk-attacker-key-our-kid",
        lambda k: k.mint(
            key=k.attacker, headers={"kid": k.kid, "jwk": {**k.attacker.jwk(), "kid": k.kid}}
        ),
        "bad_signature",
    ),
    (
        "attacker-key-our-kid",
        lambda k: k.mint(key=k.attacker, headers={"kid": k.kid}),
        "bad_signature",
    ),
    # --- critical headers, nesting, other shapes
    ("crit-unknown-extension", lambda k: k.mint(headers={"crit": ["exp"]}), "malformed"),
    ("crit-b64-detached-payload", lambda k: k.mint(headers={"b64": False}), "unsupported_crit"),
    (
        "nested-jwt-as-payload",
        lambda k: forge(k.header(cty="JWT"), k.mint(), key=k.key),
        "malformed",
    ),
    (
        "nested-jwt-attacker-outer",
        lambda k: forge(k.header(cty="JWT"), k.mint(), key=k.attacker),
        "bad_signature",
    ),
    ("jwe-shaped-5-segments", _jwe_shaped, "malformed"),
    ("header-json-array", lambda k: forge([k.header()], k.claims(), key=k.key), "malformed"),
    ("header-not-base64", lambda k: "!!!!." + k.mint().split(".", 1)[1], "malformed"),
    ("garbage", lambda k: "this-is-not-a-jwt", "malformed"),
    ("two-segments", lambda k: k.mint().rsplit(".", 1)[0], "malformed"),
    # --- typ
    ("typ-wrong", lambda k: k.mint(headers={"typ": "dpop+jwt"}), "bad_typ"),
    ("typ-id-token", lambda k: k.mint(headers={"typ": "id_token+jwt"}), "bad_typ"),
    ("typ-not-a-string", lambda k: k.mint(headers={"typ": 1}), "bad_typ"),
    ("typ-missing", lambda k: k.mint(headers={"typ": None}), "bad_typ"),
    # --- signature integrity
    ("tampered-payload", _tampered, "bad_signature"),
    ("signature-spliced", _spliced, "bad_signature"),
    ("signature-stripped", _stripped, "bad_signature"),
    # --- time
    ("expired", lambda k: k.mint(ttl=-3600), "expired"),
    ("nbf-in-future", lambda k: k.mint(nbf=_now() + 3600), "not_yet_valid"),
    ("iat-far-future", lambda k: k.mint(iat=_now() + 365 * 86400), "not_yet_valid"),
    ("exp-missing", lambda k: k.mint(drop=("exp",)), "missing_claim"),
    ("exp-not-a-number", lambda k: k.mint(exp="tomorrow"), "malformed"),
    # --- audience and issuer
    (
        "aud-list-without-us",
        lambda k: k.mint(aud=["https://other.example/mcp", "api://todos"]),
        "wrong_audience",
    ),
    ("aud-wrong", lambda k: k.mint(aud="api://something-else"), "wrong_audience"),
    ("aud-other-resource", lambda k: k.mint(aud="https://other.example/mcp"), "wrong_audience"),
    ("aud-longer-path", lambda k: k.mint(aud=RESOURCE + "/admin"), "wrong_audience"),
    ("aud-empty-string", lambda k: k.mint(aud=""), "missing_claim"),
    ("aud-empty-list", lambda k: k.mint(aud=[]), "missing_claim"),
    ("iss-wrong", lambda k: k.mint(iss="https://evil.example"), "wrong_issuer"),
    ("iss-trailing-slash", lambda k: k.mint(iss=k.issuer + "/"), "wrong_issuer"),
    # --- claim types and sizes
    ("scope-int", lambda k: k.mint(scope=7), "bad_claim"),
    ("scope-dict", lambda k: k.mint(scope={"todo:write": True}), "bad_claim"),
    ("scope-list-of-ints", lambda k: k.mint(scope=[1, 2]), "bad_claim"),
    ("scp-string-list-mixed", lambda k: k.mint(scope=None, scp=["todo:read", 1]), "bad_claim"),
    ("client-id-missing", lambda k: k.mint(drop=("client_id",)), "missing_claim"),
    ("client-id-not-a-string", lambda k: k.mint(client_id=["a"]), "bad_claim"),
    ("tenant-claim-dict", lambda k: k.mint(org_id={"id": "acme"}), "bad_claim"),
    ("huge-claims-over-8kb", lambda k: k.mint(blob="x" * 9000), "oversized"),
    # --- the Authorization header itself
    (
        "non-utf8-bytes-in-header",
        lambda k: [("authorization", b"Bearer \xff\xfe\xfd." + k.mint().encode()[2:])],
        "malformed",
    ),
    (
        "two-authorization-headers",
        lambda k: [*bearer(k.mint()), *bearer(k.mint())],
        "malformed",
    ),
    ("two-tokens-in-one-header", lambda k: bearer(f"{k.mint()} {k.mint()}"), "malformed"),
    ("bearer-without-token", lambda k: [("authorization", "Bearer")], "malformed"),
]


def _headers_for(built: str | HeaderList) -> tuple[HeaderList, str | None]:
    if isinstance(built, str):
        return bearer(built), built
    return built, None


def assert_invalid_token(resp: httpx2.Response, token: str | None, reason: str) -> None:
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{METADATA_URL}"' in challenge
    body = resp.json()
    assert body["jsonrpc"] == "2.0"
    assert body["error"]["code"] == -32001
    data = body["error"]["data"]
    assert data["error"] == "invalid_token"
    assert data["error_description"]
    assert f'error_description="{data["error_description"]}"' in challenge
    if token:  # the token (or any part of it) is never echoed back
        for part in {token, *(p for p in token.split(".") if len(p) > 8)}:
            assert part not in resp.text
            assert part not in challenge
    row = only_row(resp)
    assert (row.outcome, row.status, row.error_code) == ("unauthenticated", 401, reason)
    if token:
        assert token not in row.error_message


@pytest.mark.parametrize(
    ("builder", "reason"), [(b, r) for _, b, r in HOSTILE], ids=[i for i, _, _ in HOSTILE]
)
def test_hostile_token_is_refused(live, kit, builder, reason):
    headers, token = _headers_for(builder(kit))
    before = AuditEvent.objects.count()
    resp = post(live, call_tool("create_todo", {"title": "pwned"}), headers)
    assert_invalid_token(resp, token, reason)
    assert AuditEvent.objects.count() == before + 1
    assert not Todo.all_tenants.exists()


def test_battery_is_large_enough():
    assert len(HOSTILE) >= 30
    assert len({i for i, _, _ in HOSTILE}) == len(HOSTILE)


# --- valid tokens ----------------------------------------------------------------------------


async def test_valid_token_with_fastmcp_client(live, mint):
    async with Client(live.url, auth=mint()) as client:
        assert {t.name for t in await client.list_tools()} == ALL_TOOLS
        created = (await client.call_tool("create_todo", {"title": "hello"})).data
        listed = (await client.call_tool("list_todos", {})).data
    assert [t["id"] for t in listed["todos"]] == [created["todo"]["id"]]


async def test_valid_token_with_mcp_sdk(live, mint):
    headers = {"Authorization": f"Bearer {mint(scope='todo:read')}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(live.url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} == READ_TOOLS
        listed = await session.call_tool("list_todos", {})
        assert not listed.is_error
        assert listed.structured_content["todos"] == []


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(live, mint, scheme):
    resp = post(live, call_tool("list_todos"), bearer(mint(), scheme=scheme))
    assert tool_result(resp)["structuredContent"]["todos"] == []
    assert only_row(resp).outcome == "ok"


# --- the bare challenge and the metadata documents --------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("authorization", "Basic dXNlcjpwYXNzd29yZA==")],
        [("authorization", "Token abc.def.ghi")],
    ],
    ids=["no-header", "basic", "other-scheme"],
)
def test_bare_challenge(live, headers):
    resp = post(live, call_tool("list_todos"), headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == (
        f'Bearer scope="todo:read todo:write", resource_metadata="{METADATA_URL}"'
    )
    assert "error=" not in resp.headers["www-authenticate"]
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["id"] == 1
    assert body["error"]["code"] == -32001
    assert "error" not in body["error"]["data"]
    assert body["error"]["data"]["error_description"]
    row = only_row(resp)
    assert (row.outcome, row.status, row.tool) == ("unauthenticated", 401, "list_todos")


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"]
)
def test_protected_resource_metadata(live, idp, path):
    with httpx2.Client(timeout=10) as http:
        resp = http.get(live.base + path)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {
        "resource": RESOURCE,
        "authorization_servers": [idp.issuer],
        "scopes_supported": ["todo:read", "todo:write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Governed MCP server",
    }


# --- JWKS: rotation, throttled refetch, outages ------------------------------------------------


def test_key_rotation_is_picked_up_after_the_refetch_window(live, mint, idp, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 2
    assert call(live, mint(), "list_todos").status_code == 200  # loads the key set
    loaded = time.monotonic()
    rotated = new_key()
    idp.keys = [*idp.keys, rotated]
    early = call(live, mint(key=rotated), "list_todos")
    if time.monotonic() - loaded < 2:  # still inside the window: the refetch is throttled
        assert early.status_code == 401
        assert only_row(early).error_code == "unknown_key"
    time.sleep(max(0.0, 2.1 - (time.monotonic() - loaded)))
    fetches = idp.jwks_fetches
    assert call(live, mint(key=rotated), "list_todos").status_code == 200
    assert idp.jwks_fetches == fetches + 1
    assert call(live, mint(), "list_todos").status_code == 200  # the old key still works
    idp.keys = [rotated]  # the old key retired at the IdP: cached until the next refresh
    assert call(live, mint(key=rotated), "list_todos").status_code == 200


def _flood(live: Any, mint: Callable[..., str], n: int = 20) -> float:
    started = time.monotonic()
    for _ in range(n):
        resp = call(live, mint(headers={"kid": f"rand-{uuid.uuid4().hex}"}), "list_todos")
        assert resp.status_code == 401
    return time.monotonic() - started


def test_unknown_kid_flood_is_throttled(live, mint, idp, settings):
    interval = 2
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = interval  # a fresh, cold key set
    before = idp.jwks_fetches
    elapsed = _flood(live, mint)
    delta = idp.jwks_fetches - before
    assert 1 <= delta <= 1 + int(elapsed / interval)  # the initial load, then throttled
    time.sleep(interval + 0.1)
    before = idp.jwks_fetches
    elapsed = _flood(live, mint)
    delta = idp.jwks_fetches - before
    assert 1 <= delta <= 1 + int(elapsed / interval)
    assert AuditEvent.objects.filter(error_code="unknown_key").count() == 40


def test_jwks_down_with_cached_keys_keeps_working(live, mint, idp, settings):
    settings.MCPAUTH_JWKS_CACHE_TTL = 1
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 0
    assert call(live, mint(), "list_todos").status_code == 200
    idp.down = True
    for _ in range(3):
        assert call(live, mint(), "list_todos").status_code == 200
    time.sleep(1.1)  # cache TTL expired and the refresh fails: the cached keys still serve
    assert call(live, mint(), "list_todos").status_code == 200
    resp = call(live, mint(headers={"kid": "unknown"}), "list_todos")
    assert resp.status_code == 401
    assert only_row(resp).error_code == "unknown_key"


def test_jwks_down_and_nothing_cached_is_503(live, mint, idp, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 0  # fresh, cold key set
    idp.down = True
    resp = call(live, mint(), "list_todos")
    assert resp.status_code == 503
    assert "www-authenticate" not in resp.headers
    row = only_row(resp)
    assert (row.outcome, row.status, row.error_code) == ("server_error", 503, "jwks_down")


def test_slow_jwks_is_bounded_by_the_timeout(live, mint, idp, settings):
    settings.MCPAUTH_JWKS_TIMEOUT = 0.5
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 0
    assert call(live, mint(), "list_todos").status_code == 200  # keys cached
    idp.delay = 2.0
    started = time.monotonic()
    resp = call(live, mint(headers={"kid": "brand-new"}), "list_todos")
    assert time.monotonic() - started < 1.5
    assert resp.status_code == 401
    assert only_row(resp).error_code == "unknown_key"
    known = time.monotonic()
    assert call(live, mint(), "list_todos").status_code == 200  # known kid: no fetch at all
    assert time.monotonic() - known < 1.0
    # let the abandoned JWKS request finish so it cannot count in a later test's fetches
    idp.delay = 0.0
    time.sleep(max(0.0, started + 2.3 - time.monotonic()))


def test_slow_jwks_on_a_cold_key_set_fails_fast(live, mint, idp, settings):
    settings.MCPAUTH_JWKS_TIMEOUT = 0.5
    idp.delay = 3.0
    started = time.monotonic()
    resp = call(live, mint(), "list_todos")  # discovery: two metadata URLs, 0.5 s each
    assert time.monotonic() - started < 2.5
    assert resp.status_code == 503
    assert only_row(resp).error_code == "jwks_down"


# --- scopes ------------------------------------------------------------------------------------


def _create(live: Any, token: str, title: str = "t") -> str:
    resp = call(live, token, "create_todo", {"title": title})
    return tool_result(resp)["structuredContent"]["todo"]["id"]


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("create_todo", {"title": "needs write"}),
        ("update_todo", {"title": "renamed"}),
        ("delete_todo", {}),
    ],
)
def test_read_token_on_write_tool_is_403_step_up(live, mint, tool, args):
    todo_id = _create(live, mint(), title="original")
    if tool != "create_todo":
        args = {**args, "todo_id": todo_id}
    resp = call(live, mint(scope="todo:read"), tool, args)
    assert resp.status_code == 403
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="todo:write"' in challenge
    assert f'resource_metadata="{METADATA_URL}"' in challenge
    body = resp.json()
    assert body["id"] == 1 and body["error"]["code"] == -32003
    assert body["error"]["data"]["error"] == "insufficient_scope"
    assert body["error"]["data"]["required_scopes"] == ["todo:write"]
    row = only_row(resp)
    assert (row.outcome, row.status, row.tool) == ("denied", 403, tool)
    assert row.error_code == "insufficient_scope"
    todo = Todo.all_tenants.get()  # the tool did not run
    assert (str(todo.pk), todo.title) == (todo_id, "original")


@pytest.mark.parametrize("scope", ["profile email", None, "todo:admin", "todo:read:extra"])
def test_no_mapped_scope_is_403_for_every_tool(live, mint, scope):
    token = mint(scope=scope)
    args = {
        "create_todo": {"title": "x"},
        "list_todos": {},
        "get_todo": {"todo_id": NO_ID},
        "update_todo": {"todo_id": NO_ID, "title": "y"},
        "delete_todo": {"todo_id": NO_ID},
    }
    for tool, arguments in args.items():
        resp = call(live, token, tool, arguments)
        assert resp.status_code == 403, (tool, resp.text)
        assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
        assert only_row(resp).outcome == "denied"
    listed = post(live, rpc("tools/list"), bearer(token))
    assert listed.status_code == 200
    assert listed.json()["result"]["tools"] == []
    assert not Todo.all_tenants.exists()


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("todo:read", READ_TOOLS),
        ("todo:write", ALL_TOOLS),
        ("todo:read todo:write", ALL_TOOLS),
        ("todo:*", ALL_TOOLS),
        ("openid profile", set()),
    ],
)
async def test_tools_list_is_filtered_by_scope(live, mint, scope, expected):
    async with Client(live.url, auth=mint(scope=scope)) as client:
        assert {t.name for t in await client.list_tools()} == expected


# --- tenants -------------------------------------------------------------------------------------


async def test_cross_tenant_isolation_through_every_tool(live, mint):
    token_a, token_b = mint(org_id="tenant-a"), mint(org_id="tenant-b")
    async with Client(live.url, auth=token_a) as a:
        todo_id = (await a.call_tool("create_todo", {"title": "A's secret"})).data["todo"]["id"]
    async with Client(live.url, auth=token_b) as b:
        with pytest.raises(ToolError, match="not found"):
            await b.call_tool("get_todo", {"todo_id": todo_id})
        with pytest.raises(ToolError, match="not found"):
            await b.call_tool("update_todo", {"todo_id": todo_id, "title": "B was here"})
        with pytest.raises(ToolError, match="not found"):
            await b.call_tool("delete_todo", {"todo_id": todo_id})
        assert (await b.call_tool("list_todos", {})).data["todos"] == []
        assert (await b.call_tool("list_todos", {"completed": False})).data["todos"] == []
    async with Client(live.url, auth=token_a) as a:
        got = (await a.call_tool("get_todo", {"todo_id": todo_id})).data["todo"]
        assert got["title"] == "A's secret"
        assert [t["id"] for t in (await a.call_tool("list_todos", {})).data["todos"]] == [todo_id]
    todo = await Todo.all_tenants.select_related("tenant").aget()
    assert todo.tenant.external_id == "tenant-a"


def _assert_denied(resp: httpx2.Response, reason: str) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["data"]["error"] == "access_denied"
    row = only_row(resp)
    assert (row.outcome, row.status, row.error_code) == ("denied", 403, reason)


def test_suspended_tenant_is_refused(live, mint):
    token = mint(org_id="acme")
    assert call(live, token, "list_todos").status_code == 200
    tenant = Tenant.objects.get(external_id="acme")
    tenant.suspended = True
    tenant.save()
    _assert_denied(call(live, token, "list_todos"), "tenant_suspended")
    _assert_denied(post(live, rpc("tools/list"), bearer(token)), "tenant_suspended")
    tenant.suspended = False
    tenant.save()
    assert call(live, token, "list_todos").status_code == 200


def test_no_tenant_claim_and_no_binding_is_refused(live, mint):
    _assert_denied(call(live, mint(org_id=None, client_id="loner"), "list_todos"), "no_tenant")
    _assert_denied(call(live, mint(org_id="", client_id="loner"), "list_todos"), "no_tenant")


def test_client_binding_supplies_the_tenant(live, mint):
    bound = Tenant.objects.create(external_id="bound-co", name="Bound Co")
    ClientBinding.objects.create(client_id="machine-1", tenant=bound)
    token = mint(org_id=None, client_id="machine-1")
    todo_id = _create(live, token)
    assert Todo.all_tenants.get(pk=todo_id).tenant_id == bound.pk
    listed = tool_result(call(live, token, "list_todos"))["structuredContent"]["todos"]
    assert [t["id"] for t in listed] == [todo_id]
    # an explicit tenant claim wins over the binding
    other = tool_result(call(live, mint(org_id="acme", client_id="machine-1"), "list_todos"))
    assert other["structuredContent"]["todos"] == []


def test_no_auto_provisioning_refuses_unknown_tenants(live, mint, settings):
    settings.MCPAUTH_AUTO_PROVISION_TENANTS = False
    _assert_denied(call(live, mint(org_id="never-seen"), "list_todos"), "unknown_tenant")
    assert not Tenant.objects.filter(external_id="never-seen").exists()
    Tenant.objects.create(external_id="never-seen")
    assert call(live, mint(org_id="never-seen"), "list_todos").status_code == 200


def test_jwks_never_loaded_is_fetched_at_most_once_per_interval(live, mint, idp, settings, client):
    """Security review: with the IdP down from the start, calls and readiness must not each
    cause an outbound fetch (20 of 20 and 10 of 10 did)."""
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 60  # a fresh, cold key set
    idp.down = True
    before = idp.attempts
    started = time.monotonic()
    for _ in range(20):
        resp = call(live, mint(), "list_todos")
        assert resp.status_code == 503
        assert resp.json()["error"]["data"]["error"] == "temporarily_unavailable"
    for _ in range(10):
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["jwks"]["error"] == "JWKSFetchError"
    # attempts back off (1 s, 2 s, 4 s ...: mcpauth.identity.jwks), the calls between them are
    # refused without fetching; each attempt's discovery tries its metadata URLs in turn
    from mcpauth.identity import tokens

    elapsed = time.monotonic() - started
    bound = 1 + int(math.log2(1 + elapsed))
    assert 1 <= tokens.keyset().fetch_count <= bound < 30
    assert 1 <= idp.attempts - before <= 3 * bound
