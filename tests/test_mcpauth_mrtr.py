"""Multi-round-trip input (MCP 2026-07-28), governed, over HTTP against 2 uvicorn workers.

A guard tool returns an ``InputRequiredResult``; the client answers and retries with
``inputResponses`` and the ``requestState`` it was given. Here, on real HTTP with a fresh
connection for every round (so the kernel spreads the rounds over both workers), PostgreSQL and
Redis:

* the rounds complete across workers: the state is sealed with a key every worker shares
  (``MCPAUTH_REQUEST_STATE_KEYS``), and a retired key still opens what it sealed (rotation);
* the state is bound to the admitted caller, the tool and its arguments, and expires;
* it is single-use: a replay is refused, on either worker;
* every refusal is the SDK's own error and is audited with its reason;
* each round has its row: the asking one ``input_required``, the next one linked to it;
* ``fastmcp.Client`` (auto) and the ``mcp`` SDK's ``Client`` drive the rounds themselves, and
  the handshake era answers as plain FastMCP does (compared call by call in the zoo test).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
import pytest
from fastmcp import Client
from mcp import Client as SDKClient
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.request_state import AESGCMRequestStateCodec, InvalidRequestState
from mcp.shared._httpx_utils import create_mcp_http_client

from audit.models import AuditEvent
from mcpauth.checks import check_configuration
from mcpauth.conf import derived_state_key, get_settings
from mcpauth.runtime import request_state
from tests.conftest import ZOO_STATE_KEY, LiveServer, Minter
from tests.test_mcpauth_zoo import seed_zoo_scopes
from tests.zoo.models import Exhibit

SHARED = pytest.mark.needs_shared_services

MODERN = "2026-07-28"
REFUSAL = {
    "code": -32602,
    "message": "Invalid or expired requestState",
    "data": {"reason": "invalid_request_state"},
}
YES = {"action": "accept", "content": {"value": "yes"}}
#: fresh connections until the rounds have crossed workers this often (bounded attempts)
CROSSINGS = 3
MAX_ATTEMPTS = 40


@pytest.fixture
def workers(zoo_workers: str) -> str:
    return zoo_workers


@pytest.fixture
def zoo(transactional_db: None) -> None:
    seed_zoo_scopes()


def call(
    url: str,
    token: str,
    tool: str,
    arguments: dict[str, Any],
    *,
    responses: dict[str, Any] | None = None,
    state: str | None = None,
    rpc_id: int = 1,
) -> httpx2.Response:
    """One 2026-07-28 ``tools/call`` on a fresh connection, as ``fastmcp.Client`` frames it."""
    params: dict[str, Any] = {
        "name": tool,
        "arguments": arguments,
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
            "io.modelcontextprotocol/clientInfo": {"name": "mrtr-test", "version": "1"},
        },
    }
    if responses is not None:
        params["inputResponses"] = responses
    if state is not None:
        params["requestState"] = state
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": tool,
        "authorization": f"Bearer {token}",
        "connection": "close",
    }
    body = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}
    return httpx2.post(url, json=body, headers=headers, timeout=20)


def ask(url: str, token: str, tool: str, arguments: dict[str, Any]) -> tuple[str, str]:
    """The first round: ``(requestState, the key of the one input request)``."""
    resp = call(url, token, tool, arguments)
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert result["resultType"] == "input_required", result
    (key,) = result["inputRequests"]
    return result["requestState"], key


def row(resp: httpx2.Response) -> AuditEvent:
    return AuditEvent.objects.get(request_id=resp.headers["x-request-id"])


def refused(resp: httpx2.Response, reason: str) -> None:
    """The SDK's frozen refusal on the wire; the real reason only in the audit row."""
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"jsonrpc": "2.0", "id": 1, "error": REFUSAL}  # nothing else on the wire
    audited = row(resp)
    assert (audited.outcome, audited.error_code) == ("invalid_request", "invalid_request_state")
    assert audited.error_message == f"requestState refused: {reason}."


@SHARED
def test_rounds_complete_across_workers_and_are_linked(
    workers: str, zoo: None, mint: Minter
) -> None:
    token = mint(scope="zoo:all")
    crossings = attempts = 0
    while crossings < CROSSINGS:
        attempts += 1
        assert attempts <= MAX_ATTEMPTS, f"the rounds crossed workers {crossings} times"
        first = call(workers, token, "zoo_which_worker", {})
        result = first.json()["result"]
        assert result["resultType"] == "input_required"
        state = result["requestState"]
        assert state.startswith("v1.")  # sealed by the SDK's codec: the body's pid is not in it
        second = call(workers, token, "zoo_which_worker", {}, responses={"go": YES}, state=state)
        assert second.status_code == 200, second.text
        answer = second.json()["result"]["structuredContent"]
        crossings += answer["asked_by"] != answer["answered_by"]
        asking, answering = row(first), row(second)
        assert (asking.outcome, asking.error_code) == ("input_required", "input_required")
        assert asking.error_message == "Asked the client for input: go (elicitation/create)."
        assert answering.outcome == "ok"
        assert answering.arguments["@mcpauth"] == {"round": 2, "continues": asking.request_id}


@SHARED
def test_a_retired_key_still_opens_what_it_sealed(
    workers: str, live: LiveServer, zoo: None, mint: Minter
) -> None:
    """Rotation: the in-process server seals with the key the workers list second; the workers
    seal with their first key, which the in-process server does not have."""
    token = mint(scope="zoo:all")
    state, key = ask(live.url, token, "zoo_confirm", {"item": "okapi"})
    done = call(workers, token, "zoo_confirm", {"item": "okapi"}, responses={key: YES}, state=state)
    assert done.json()["result"]["content"][0]["text"] == "accept:yes after asked:okapi"
    state, key = ask(workers, token, "zoo_confirm", {"item": "okapi"})
    other = call(
        live.url, token, "zoo_confirm", {"item": "okapi"}, responses={key: YES}, state=state
    )
    refused(other, "not sealed by this server's keys (tampered with, or a retired key)")


@SHARED
def test_a_state_is_single_use_on_every_worker(workers: str, zoo: None, mint: Minter) -> None:
    token = mint(scope="zoo:all")
    state, key = ask(workers, token, "zoo_confirm", {"item": "zebra"})
    done = call(workers, token, "zoo_confirm", {"item": "zebra"}, responses={key: YES}, state=state)
    assert done.json()["result"]["content"][0]["text"] == "accept:yes after asked:zebra"
    for _ in range(6):  # fresh connections: both workers refuse it
        again = call(
            workers, token, "zoo_confirm", {"item": "zebra"}, responses={key: YES}, state=state
        )
        refused(again, "already used (a replay)")
    assert AuditEvent.objects.filter(tool="zoo_confirm", outcome="ok").count() == 1


@SHARED
def test_a_state_is_bound_to_the_caller(workers: str, zoo: None, mint: Minter) -> None:
    owner = mint(scope="zoo:all", client_id="keeper-a", org_id="t1")
    state, key = ask(workers, owner, "zoo_confirm", {"item": "lion"})
    others = {
        "another tenant": mint(scope="zoo:all", client_id="keeper-b", org_id="t2"),
        "same tenant, another client": mint(scope="zoo:all", client_id="keeper-b", org_id="t1"),
        "same client, another subject": mint(
            scope="zoo:all", client_id="keeper-a", org_id="t1", sub="someone-else"
        ),
    }
    for what, token in others.items():
        stolen = call(
            workers, token, "zoo_confirm", {"item": "lion"}, responses={key: YES}, state=state
        )
        refused(stolen, "issued to another caller")
        assert row(stolen).client_id in ("keeper-a", "keeper-b"), what
    # refusals do not use the state up: its owner still completes the call
    done = call(workers, owner, "zoo_confirm", {"item": "lion"}, responses={key: YES}, state=state)
    assert done.json()["result"]["content"][0]["text"] == "accept:yes after asked:lion"


@SHARED
def test_a_state_is_bound_to_the_tool_and_its_arguments(
    workers: str, zoo: None, mint: Minter
) -> None:
    token = mint(scope="zoo:all")
    state, key = ask(workers, token, "zoo_confirm", {"item": "lion"})
    moved = call(
        workers, token, "zoo_confirm", {"item": "tiger"}, responses={key: YES}, state=state
    )
    refused(moved, "issued for another call (method, tool, URI or arguments)")
    other_tool = call(
        workers, token, "zoo_survey", {"topic": "lion"}, responses={key: YES}, state=state
    )
    refused(other_tool, "issued for another call (method, tool, URI or arguments)")


@SHARED
def test_tampered_and_expired_states_are_refused(workers: str, zoo: None, mint: Minter) -> None:
    token = mint(scope="zoo:all")
    state, key = ask(workers, token, "zoo_confirm", {"item": "emu"})
    tampered = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
    resp = call(
        workers, token, "zoo_confirm", {"item": "emu"}, responses={key: YES}, state=tampered
    )
    refused(resp, "not sealed by this server's keys (tampered with, or a retired key)")
    resp = call(workers, token, "zoo_confirm", {"item": "emu"}, responses={key: YES}, state="v1.x")
    refused(resp, "not sealed by this server's keys (tampered with, or a retired key)")
    # the same state with its expiry moved into the past, sealed again with the workers' key
    codec = AESGCMRequestStateCodec([ZOO_STATE_KEY])
    claims = json.loads(codec.unseal(state))
    claims.update(iat=time.time() - 700, exp=time.time() - 100)
    expired = codec.seal(json.dumps(claims).encode())
    resp = call(workers, token, "zoo_confirm", {"item": "emu"}, responses={key: YES}, state=expired)
    refused(resp, "expired")
    # and one of this server's own keys and audience, but no round of its making
    claims.update(iat=time.time(), exp=time.time() + 60, s="not an envelope")
    forged = codec.seal(json.dumps(claims).encode())
    resp = call(workers, token, "zoo_confirm", {"item": "emu"}, responses={key: YES}, state=forged)
    refused(resp, "not a round of this server")


@SHARED
def test_a_sync_write_asks_first_and_writes_once(workers: str, zoo: None, mint: Minter) -> None:
    token = mint(scope="zoo:all")
    label = f"adopted-{time.time_ns()}"
    state, key = ask(workers, token, "zoo_adopt", {"label": label})
    assert not Exhibit.objects.filter(label=label).exists()
    done = call(workers, token, "zoo_adopt", {"label": label}, responses={key: YES}, state=state)
    assert done.json()["result"]["structuredContent"] == {"label": label, "adopted": True}
    assert Exhibit.objects.filter(label=label).count() == 1
    assert row(done).arguments["@mcpauth"]["round"] == 2


@SHARED
async def test_clients_drive_the_rounds_themselves(workers: str, zoo: None, mint: Minter) -> None:
    token = mint(scope="zoo:all")
    asked: list[str] = []

    async def elicit(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append(message)
        return {"value": "yes"}

    async with Client(workers, auth=token, elicitation_handler=elicit) as client:
        assert client.protocol_version == MODERN
        assert (await client.call_tool("zoo_confirm", {"item": "kiwi"})).data == (
            "accept:yes after asked:kiwi"
        )
        survey = await client.call_tool("zoo_survey", {"topic": "birds"})
        assert survey.structured_content == {
            "topic": "birds",
            "name": "accept:yes",
            "age": "accept:yes",
        }
    assert asked == ["Feed the kiwi?", "birds: your name?", "birds: and your age?"]

    async def sdk_elicit(context: Any, params: Any) -> Any:
        from mcp_types import ElicitResult

        asked.append(params.message)
        return ElicitResult(action="accept", content={"value": "sdk"})

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        SDKClient(
            streamable_http_client(workers, http_client=http), elicitation_callback=sdk_elicit
        ) as sdk,
    ):
        result = await sdk.call_tool("zoo_confirm", {"item": "kea"})
        assert result.content[0].text == "accept:sdk after asked:kea"
    rows = [
        (r.outcome, bool(r.arguments.get("@mcpauth")))
        async for r in AuditEvent.objects.filter(method="tools/call").order_by("id")
    ]
    assert rows == [
        ("input_required", False),
        ("ok", True),
        ("input_required", False),
        ("input_required", True),
        ("ok", True),
        ("input_required", False),
        ("ok", True),
    ]


@SHARED
async def test_the_handshake_era_answers_as_plain_fastmcp(
    workers: str, zoo: None, mint: Minter
) -> None:
    """No multi-round-trip result before 2026-07-28: FastMCP's own error (the zoo compares it
    with plain FastMCP's), and a row that says what the body did."""
    token = mint(scope="zoo:all")
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(workers, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        with pytest.raises(MCPError) as raised:
            await session.call_tool("zoo_confirm", {"item": "yak"})
    async with Client(workers, auth=token, mode="legacy") as client:
        with pytest.raises(MCPError) as also:
            await client.call_tool_mcp("zoo_confirm", {"item": "yak"})
    for error in (raised.value.error, also.value.error):
        assert error.code == -32602
        assert "only exists at MCP 2026-07-28" in error.message
    rows = [r async for r in AuditEvent.objects.filter(method="tools/call")]
    assert [(r.outcome, r.error_code) for r in rows] == [
        ("tool_error", "input_required_unsupported")
    ] * 2


# --- configuration -------------------------------------------------------------------------------


def test_without_keys_the_state_key_is_derived_from_secret_key(settings: Any) -> None:
    settings.MCPAUTH_REQUEST_STATE_KEYS = []
    conf = get_settings()
    assert conf.request_state_keys_derived
    assert conf.request_state_keys == (derived_state_key(settings.SECRET_KEY),)
    assert derived_state_key(settings.SECRET_KEY) != settings.SECRET_KEY
    # fine in development and in the tests; a warning in production
    assert "mcpauth.W060" not in {m.id for m in check_configuration()}
    settings.DEBUG, settings.TESTING = False, False
    warning = next(m for m in check_configuration() if m.id == "mcpauth.W060")
    assert not warning.is_serious()
    settings.MCPAUTH_REQUEST_STATE_KEYS = ["k" * 32]
    assert "mcpauth.W060" not in {m.id for m in check_configuration()}
    assert get_settings().request_state_keys == ("k" * 32,)


@pytest.mark.parametrize(
    ("keys", "ttl", "says"),
    [
        (["tiny-secret"], 600, "entry 1 is shorter than 32 bytes"),
        (["a" * 32, "a" * 32], 600, "an entry is repeated"),
        (["a" * 32], 0, "MCPAUTH_REQUEST_STATE_TTL is 0.0"),
    ],
)
def test_unusable_keys_stop_startup(settings: Any, keys: list[str], ttl: float, says: str) -> None:
    settings.MCPAUTH_REQUEST_STATE_KEYS = keys
    settings.MCPAUTH_REQUEST_STATE_TTL = ttl
    (error,) = [m for m in check_configuration() if m.id == "mcpauth.E060"]
    assert error.is_serious() and says in error.msg
    assert "tiny-secret" not in error.msg + str(error.hint)  # a key is never quoted


def test_the_policy_is_the_configured_ring(settings: Any) -> None:
    """The first key seals, every key opens; the audience is this resource's URL."""
    settings.MCPAUTH_REQUEST_STATE_KEYS = ["n" * 32, "o" * 32]
    settings.MCPAUTH_REQUEST_STATE_TTL = 90
    policy = request_state.security()
    assert policy.ttl == 90 and policy.audience == get_settings().resource_url
    sealed = policy.codec.seal(b"x")
    assert AESGCMRequestStateCodec(["n" * 32]).unseal(sealed) == b"x"
    with pytest.raises(InvalidRequestState):
        AESGCMRequestStateCodec(["o" * 32]).unseal(sealed)
    assert policy.codec.unseal(AESGCMRequestStateCodec(["o" * 32]).seal(b"old")) == b"old"
