"""Client credentials and token exchange end to end, against a real authorization server.

``tests/oidc/provider.mjs`` runs panva's oidc-provider with the client_credentials grant,
resource indicators (RFC 8707) and an RFC 8693 token-exchange grant for the MCP server's own
client (``mcp-server``). Callers get their tokens there too, so a ``token_exchange``
downstream exchanges the caller's real token at the caller's real issuer. The downstream
(``tests/downstream_service.py``) verifies every token it receives against the provider's
JWKS: signature, expiry, its own audience, and the ``act`` claim after an exchange. The provider
prints one line per grant, which is how the tests count token requests (the cache at work).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import jwt
import pytest
from django.core.cache import caches

from audit.models import AuditEvent
from mcpauth.downstream import oauth
from tests.conftest import RESOURCE, LiveServer, free_port, new_key, seed_todo_scopes
from tests.downstream_service import (
    KEY,
    DownstreamService,
    call_tool_over_mcp,
    grant_outbound_tools,
    no_secret_anywhere,
    rows_of,
    serve,
    set_secret,
)
from tests.servers import server_env, uvicorn_process
from tests.test_e2e_oidc_provider import OIDCProvider

SERVER_SECRET = "server-secret-0123456789abcdef"
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    idp = OIDCProvider(workdir=tmp_path_factory.mktemp("oidc-downstream"))
    idp.start([new_key("op-ds-key-1")])
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture(scope="module")
def service(provider: OIDCProvider) -> Iterator[DownstreamService]:
    issuers = {provider.issuer: provider.metadata["jwks_uri"]}
    with serve(DownstreamService(issuers=issuers, actor="mcp-server")) as svc:
        yield svc


def declarations(svc: DownstreamService, provider: OIDCProvider) -> dict[str, Any]:
    server = {"client_id": "mcp-server", "client_secret": SERVER_SECRET}
    return {
        "partner": {
            "url": svc.url("partner"),
            "auth": "client_credentials",
            "issuer": provider.issuer,
            "scopes": ["partner:read"],
            **server,
        },
        # its client secret is the stored one; the token endpoint is given, not discovered
        "partner-stored": {
            "url": svc.url("partner"),
            "auth": "client_credentials",
            "token_url": provider.metadata["token_endpoint"],
            "client_id": "mcp-server",
            "scopes": ["partner:read"],
        },
        # the caller's issuer (the provider) is the default
        "ledger": {
            "url": svc.url("ledger"),
            "auth": "token_exchange",
            "scopes": ["ledger:read"],
            **server,
        },
        "ledger-admin": {
            "url": svc.url("ledger"),
            "auth": "token_exchange",
            "scopes": ["ledger:admin"],
            **server,
        },
    }


def grants(provider: OIDCProvider, grant: str) -> int:
    """Successful grants of ``grant`` to ``mcp-server`` so far (the provider's own log)."""
    log = provider.workdir / f"stdout-{provider.starts}.log"
    count = 0
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("grant") == grant:
            count += entry.get("client") == "mcp-server"
    return count


@pytest.fixture
def world(
    provider: OIDCProvider, service: DownstreamService, live: LiveServer, settings: Any
) -> DownstreamService:
    settings.MCPAUTH_ISSUER = provider.issuer
    settings.MCPAUTH_JWKS_URL = ""
    settings.MCPAUTH_AUDIENCE = ""
    settings.MCPAUTH_TENANT_CLAIM = "org_id"
    settings.MCPAUTH_ENCRYPTION_KEYS = [KEY]
    settings.MCPAUTH_DOWNSTREAMS = declarations(service, provider)
    service.reset()
    caches["default"].clear()
    oauth.clear_metadata()
    grant_outbound_tools()
    return service


def brief_token(provider: OIDCProvider) -> str:
    """A 5-second token of ``mcp-brief`` (a client of provider.mjs), for this server."""
    resp = httpx2.post(
        provider.metadata["token_endpoint"],
        data={"grant_type": "client_credentials", "scope": "todo:read", "resource": RESOURCE},
        auth=("mcp-brief", "brief-secret-0123456789abcdef"),
        timeout=10,
    )
    assert resp.status_code == 200 and resp.json()["expires_in"] == 5, resp.text
    return str(resp.json()["access_token"])


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# --- client credentials (3b) ------------------------------------------------------------------


def test_client_credentials_token_for_the_downstream_cached_for_the_next_calls(
    world: DownstreamService, provider: OIDCProvider, live: LiveServer
) -> None:
    caller = provider.token("mcp-rw")
    before = grants(provider, CLIENT_CREDENTIALS)
    first = call_tool_over_mcp(live.url, caller, "call_sync", {"name": "partner"})
    assert first.data["status"] == 200, first.data
    proof = first.data["body"]
    assert (proof["sub"], proof["client_id"], proof["aud"]) == (
        "mcp-server",
        "mcp-server",
        world.url("partner"),
    )
    assert proof["scope"] == "partner:read" and "act" not in proof
    assert "authorization" not in {k.lower() for k in first.data["request_headers"]}

    second = call_tool_over_mcp(live.url, caller, "call_async", {"name": "partner"})
    assert second.data["body"]["jti"] == proof["jti"]  # the same token, from the cache
    assert grants(provider, CLIENT_CREDENTIALS) - before == 1

    _, [out1] = rows_of(first.request_id)
    _, [out2] = rows_of(second.request_id)
    assert [
        (o.outcome, o.status, o.arguments["auth"], o.arguments["obtained"])
        for o in (
            out1,
            out2,
        )
    ] == [("ok", 200, "client_credentials", "issuer"), ("ok", 200, "client_credentials", "cache")]
    no_secret_anywhere(SERVER_SECRET, caller)


def test_client_credentials_with_the_stored_client_secret(
    world: DownstreamService, provider: OIDCProvider, live: LiveServer
) -> None:
    caller = provider.token("mcp-rw")
    refused = call_tool_over_mcp(live.url, caller, "call_sync", {"name": "partner-stored"})
    assert refused.text == "No secret is stored for downstream 'partner-stored'."
    _, [out] = rows_of(refused.request_id)
    assert (out.outcome, out.error_code) == ("denied", "no_secret")

    set_secret("partner-stored", SERVER_SECRET)
    reply = call_tool_over_mcp(live.url, caller, "call_sync", {"name": "partner-stored"})
    assert reply.data["status"] == 200 and reply.data["body"]["sub"] == "mcp-server"
    no_secret_anywhere(SERVER_SECRET, caller)


# --- token exchange (3c) ----------------------------------------------------------------------


def test_token_exchange_acts_for_the_caller_and_is_cached_per_caller(
    world: DownstreamService, provider: OIDCProvider, live: LiveServer
) -> None:
    acme = provider.token("mcp-rw")
    before = grants(provider, TOKEN_EXCHANGE)
    first = call_tool_over_mcp(live.url, acme, "call_sync", {"name": "ledger"})
    assert first.data["status"] == 200, first.data
    proof = first.data["body"]
    # the downstream checked the signature, expiry, its audience and the actor
    assert (proof["sub"], proof["client_id"], proof["org_id"]) == ("mcp-rw", "mcp-rw", "acme")
    assert proof["act"] == {"sub": "mcp-server"} and proof["aud"] == world.url("ledger")
    assert "authorization" not in {k.lower() for k in first.data["request_headers"]}

    again = call_tool_over_mcp(live.url, acme, "call_async", {"name": "ledger"})
    assert again.data["body"]["jti"] == proof["jti"]
    globex = call_tool_over_mcp(
        live.url, provider.token("mcp-globex"), "call_sync", {"name": "ledger"}
    )
    assert (globex.data["body"]["sub"], globex.data["body"]["org_id"]) == ("mcp-globex", "globex")
    assert grants(provider, TOKEN_EXCHANGE) - before == 2  # one per caller

    obtained = [rows_of(r.request_id)[1][0].arguments["obtained"] for r in (first, again, globex)]
    assert obtained == ["issuer", "cache", "issuer"]
    # the caller's own token never reached the downstream
    seen = {r["auth_fingerprint"] for r in world.requests_to("ledger")}
    assert len(seen) == 2
    no_secret_anywhere(SERVER_SECRET, acme)


def test_a_refused_exchange_is_a_clear_tool_error_and_recorded(
    world: DownstreamService, provider: OIDCProvider, live: LiveServer
) -> None:
    reply = call_tool_over_mcp(
        live.url, provider.token("mcp-rw"), "call_sync", {"name": "ledger-admin"}
    )
    assert reply.is_error
    assert reply.text == "The identity provider refused the token exchange request (invalid_scope)."
    call, [out] = rows_of(reply.request_id)
    assert (call.outcome, call.error_message) == ("denied", reply.text)
    assert (out.outcome, out.status, out.error_code) == ("denied", 400, "credential_refused")
    assert out.arguments["auth"] == "token_exchange"
    assert world.requests_to("ledger") == []


def test_an_exchanged_token_is_never_used_past_the_callers_own(
    world: DownstreamService, provider: OIDCProvider, live: LiveServer, settings: Any
) -> None:
    """The provider gives exchanged tokens 300 s whatever the subject token's lifetime: the
    cap to the caller's own expiry is the server's."""
    settings.MCPAUTH_LEEWAY_SECONDS = 0
    # the provider's keys first, so the short token's calls are quick
    call_tool_over_mcp(live.url, provider.token("mcp-rw"), "count_receipts")
    before = grants(provider, TOKEN_EXCHANGE)
    brief = brief_token(provider)
    first = call_tool_over_mcp(live.url, brief, "call_sync", {"name": "ledger"})
    second = call_tool_over_mcp(live.url, brief, "call_sync", {"name": "ledger"})
    exchanged_exp = first.data["body"]["exp"]
    assert exchanged_exp > claims(brief)["exp"] + 60  # not capped by the provider
    assert second.data["body"]["jti"] == first.data["body"]["jti"]
    time.sleep(max(0.0, claims(brief)["exp"] - time.time()) + 0.5)

    later = brief_token(provider)  # the same caller, a new token
    third = call_tool_over_mcp(live.url, later, "call_sync", {"name": "ledger"})
    assert third.data["status"] == 200
    assert third.data["body"]["jti"] != first.data["body"]["jti"]  # exchanged afresh
    assert grants(provider, TOKEN_EXCHANGE) - before == 2
    assert rows_of(third.request_id)[1][0].arguments["obtained"] == "issuer"


# --- shared by every worker -------------------------------------------------------------------


@pytest.mark.needs_shared_services
def test_client_credentials_token_is_shared_by_two_workers(
    provider: OIDCProvider, service: DownstreamService, transactional_db: None, tmp_path: Any
) -> None:
    seed_todo_scopes()
    grant_outbound_tools()
    service.reset()
    caches["default"].clear()  # the servers' Redis: nothing cached before they start
    env = server_env(
        provider.issuer,
        str(tmp_path),
        DJANGO_SETTINGS_MODULE="tests.settings",
        MCPAUTH_DOWNSTREAMS=json.dumps({"partner": declarations(service, provider)["partner"]}),
        MCPAUTH_ENCRYPTION_KEYS=KEY,
    )
    caller = provider.token("mcp-rw")
    before = grants(provider, CLIENT_CREDENTIALS)
    replies = []
    with (
        uvicorn_process(free_port(), env, workers=2) as base,
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        deadline = time.monotonic() + 60
        # batches of 4 concurrent calls, each on a fresh connection, until both workers served
        while len(replies) < 48 and time.monotonic() < deadline:
            batch = [
                pool.submit(
                    call_tool_over_mcp, f"{base}/mcp", caller, "call_sync", {"name": "partner"}
                )
                for _ in range(4)
            ]
            replies += [f.result(timeout=30) for f in batch]
            if len(replies) >= 8 and len({r.data["pid"] for r in replies}) == 2:
                break
    assert all(r.data["status"] == 200 for r in replies), replies[0].data
    per_worker = sorted(Counter(r.data["pid"] for r in replies).values())
    print(f"\n{len(replies)} calls on 2 workers ({per_worker}), one client-credentials token")
    assert len(per_worker) == 2, "one worker served every call"
    assert len({r.data["body"]["jti"] for r in replies}) == 1  # one token for everybody
    assert grants(provider, CLIENT_CREDENTIALS) - before == 1
    outs = AuditEvent.objects.filter(method="outbound/partner")
    assert outs.count() == len(replies)
    assert sorted({o.arguments["obtained"] for o in outs}) == ["cache", "issuer"]
    assert outs.filter(arguments__obtained="issuer").count() == 1
