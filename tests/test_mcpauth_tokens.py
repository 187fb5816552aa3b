"""Unit tests of ``mcpauth.identity.tokens.verify()``, the key set, the Scalekit preset and the
checks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from django.core.exceptions import ImproperlyConfigured

from mcpauth.checks import assert_startup_ready, check_configuration
from mcpauth.conf import get_settings
from mcpauth.exceptions import InvalidToken, ServiceUnavailable
from mcpauth.identity import jwks, tokens
from mcpauth.identity.tokens import JWKSFetchError, KeySet, fingerprint, keyset, verify
from mcpauth.models import ScopeMapping
from tests.conftest import RESOURCE, SigningKey, new_key
from tests.servers import json_server


def reason_of(raw: str) -> str:
    with pytest.raises(InvalidToken) as info:
        verify(raw)
    return info.value.reason


# --- claim extraction ------------------------------------------------------------------------


def test_valid_token_yields_identity(mint):
    token = verify(mint(scope="todo:read  todo:write", client_id="c-1", jti="jti-1"))
    assert token.client_id == "c-1"
    assert token.subject == "user-of-c-1"
    assert token.scopes == frozenset({"todo:read", "todo:write"})
    assert token.token_id == "jti-1"
    assert token.claims["org_id"] == "acme"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"client_id": "a", "azp": "b", "cid": "c"}, "a"),
        ({"azp": "b", "cid": "c"}, "b"),
        ({"cid": "c"}, "c"),
        ({"azp": "b"}, "b"),
    ],
)
def test_client_id_precedence(mint, claims, expected):
    client_id = claims.pop("client_id", None)
    raw = mint(client_id=client_id, **claims) if client_id else mint(drop=("client_id",), **claims)
    assert verify(raw).client_id == expected


def test_no_client_claim_is_refused(mint):
    assert reason_of(mint(drop=("client_id",))) == "missing_claim"


@pytest.mark.parametrize("bad", [123, "", "x" * 256, ["a"], {"a": 1}, True])
def test_malformed_client_id_is_refused(mint, bad):
    assert reason_of(mint(client_id=bad)) == "bad_claim"


def test_subject_defaults_to_client_id(mint):
    assert verify(mint(drop=("sub",), client_id="machine")).subject == "machine"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"scope": "a b  c "}, {"a", "b", "c"}),
        ({"scp": ["a", "b"]}, {"a", "b"}),
        ({"scopes": ["a", ""]}, {"a"}),
        ({"permissions": ["p:1", "p:2"]}, {"p:1", "p:2"}),
        ({"scope": "a", "scp": ["b"], "scopes": ["c"], "permissions": ["d"]}, {"a", "b", "c", "d"}),
        ({"scp": "x y"}, {"x", "y"}),
        ({}, set()),
    ],
)
def test_scope_claims(mint, claims, expected):
    claims = dict(claims)
    assert verify(mint(scope=claims.pop("scope", None), **claims)).scopes == frozenset(expected)


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": 1},
        {"scope": {"todo:read": True}},
        {"scope": ["todo:read", 1]},
        {"scp": [1, 2]},
        {"scopes": None},
        {"permissions": True},
        {"scope": " ".join(f"s{i}" for i in range(257))},
        {"scope": "x" * 201},
    ],
)
def test_malformed_scope_claims_are_refused(mint, claims):
    claims = dict(claims)
    assert reason_of(mint(scope=claims.pop("scope", None), **claims)) == "bad_claim"


def test_token_id_is_jti_when_usable(mint):
    assert verify(mint(jti="abc")).token_id == "abc"


def test_non_string_jti_is_refused(mint):
    assert reason_of(mint(jti=42)) == "malformed"  # PyJWT insists on a string jti


@pytest.mark.parametrize("jti", [None, "", "j" * 129])
def test_token_id_falls_back_to_fingerprint(mint, jti):
    raw = mint(jti=jti) if jti is not None else mint(drop=("jti",))
    token_id = verify(raw).token_id
    assert token_id == fingerprint(raw)
    assert token_id.startswith("sha256:") and len(token_id) == 7 + 16
    assert raw not in token_id


def test_audience_list_containing_us_is_accepted(mint):
    assert verify(mint(aud=["https://other.example/mcp", RESOURCE])).client_id == "client-1"


def test_audience_list_without_us_is_refused(mint):
    assert reason_of(mint(aud=["https://other.example/mcp"])) == "wrong_audience"


def test_extra_audience_setting(mint, settings):
    settings.MCPAUTH_AUDIENCE = "api://todos"
    assert verify(mint(aud="api://todos")).client_id == "client-1"
    # MCPAUTH_AUDIENCE replaces the default resource audience for the oidc preset
    assert reason_of(mint()) == "wrong_audience"


def test_leeway_is_honoured(mint):
    now = int(time.time())
    assert verify(mint(exp=now - 20))
    assert verify(mint(nbf=now + 20, iat=now + 20))
    assert reason_of(mint(exp=now - 45)) == "expired"
    assert reason_of(mint(nbf=now + 45)) == "not_yet_valid"
    assert reason_of(mint(iat=now + 45)) == "not_yet_valid"


def test_leeway_setting(mint, settings):
    settings.MCPAUTH_LEEWAY_SECONDS = 0
    assert reason_of(mint(exp=int(time.time()) - 5)) == "expired"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_required_claims(mint, claim):
    assert reason_of(mint(drop=(claim,))) == "missing_claim"


def test_typ_rules(mint, settings):
    assert verify(mint(headers={"typ": "JWT"}))
    assert verify(mint(headers={"typ": "application/AT+JWT"}))
    assert reason_of(mint(headers={"typ": "dpop+jwt"})) == "bad_typ"
    assert reason_of(mint(headers={"typ": None})) == "bad_typ"
    settings.MCPAUTH_REQUIRE_TYP = False
    assert verify(mint(headers={"typ": None}))
    assert reason_of(mint(headers={"typ": "dpop+jwt"})) == "bad_typ"


def test_header_rules(mint, rsa_key):
    # PyJWT itself rejects unknown critical extensions (reported as malformed); what it lets
    # through ("b64") is refused by our own rule
    assert reason_of(mint(headers={"crit": ["exp"]})) == "malformed"
    assert reason_of(mint(headers={"b64": False})) == "unsupported_crit"  # detached payload
    assert reason_of(mint(headers={"crit": "b64"})) == "malformed"
    assert reason_of(mint(headers={"kid": "k" * 257})) == "malformed"
    assert reason_of("a.b") == "malformed"
    assert reason_of("a.b.c.d.e") == "malformed"
    assert reason_of("x" * 9000) == "oversized"
    assert reason_of(jwt.encode({"a": 1}, None, algorithm="none")) == "disallowed_alg"


def test_key_family_must_match_alg(mint, rsa_key):
    raw = mint()
    _header, payload, sig = raw.split(".")
    forged_header = jwt.utils.base64url_encode(
        json.dumps({"alg": "ES256", "kid": rsa_key.kid, "typ": "JWT"}).encode()
    ).decode()
    assert reason_of(f"{forged_header}.{payload}.{sig}") == "disallowed_alg"


def test_not_configured_is_service_unavailable(mint, settings):
    settings.MCPAUTH_ISSUER = ""
    settings.DEBUG = False
    with pytest.raises(ServiceUnavailable) as info:
        verify(mint())
    assert info.value.reason == "not_configured"


# --- the key set -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    fake = SimpleNamespace(monotonic=c.monotonic, time=time.time)
    monkeypatch.setattr(tokens, "time", fake)
    monkeypatch.setattr(jwks, "time", fake)
    return c


def test_keyset_first_use_fetches_then_caches(idp, rsa_key, clock):
    ks = KeySet(get_settings())
    before = idp.jwks_fetches
    assert ks.get(rsa_key.kid).key_type == "RSA"
    assert ks.get(rsa_key.kid)
    assert idp.jwks_fetches - before == 1
    assert ks.fetch_count == 1


def test_keyset_unknown_kid_refetch_is_throttled(idp, rsa_key, clock, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 60
    ks = KeySet(get_settings())
    ks.get(rsa_key.kid)
    before = idp.jwks_fetches
    for _ in range(20):  # right after a fetch: no refetch at all
        with pytest.raises(InvalidToken):
            ks.get(f"nope-{uuid.uuid4().hex}")
    assert idp.jwks_fetches == before
    for window in range(1, 4):  # then at most one fetch per window, however many unknown kids
        clock.now += 61
        for _ in range(20):
            with pytest.raises(InvalidToken) as info:
                ks.get(f"nope-{uuid.uuid4().hex}")
            assert info.value.reason == "unknown_key"
        assert idp.jwks_fetches - before == window


def test_keyset_rotation_picks_up_new_key_after_window(idp, rsa_key, clock, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 60
    ks = KeySet(get_settings())
    ks.get(rsa_key.kid)
    rotated = new_key()
    idp.keys = [rsa_key, rotated]
    with pytest.raises(InvalidToken):
        ks.get(rotated.kid)  # throttled: the fetch just happened
    clock.now += 61
    assert ks.get(rotated.kid)
    assert ks.get(rsa_key.kid)


def test_keyset_ttl_refresh(idp, rsa_key, clock, settings):
    settings.MCPAUTH_JWKS_CACHE_TTL = 100
    ks = KeySet(get_settings())
    ks.get(rsa_key.kid)
    before = idp.jwks_fetches
    clock.now += 50
    ks.get(rsa_key.kid)
    assert idp.jwks_fetches == before
    clock.now += 60
    ks.get(rsa_key.kid)
    assert idp.jwks_fetches == before + 1


def test_keyset_keeps_cached_keys_when_idp_down(idp, rsa_key, clock, settings):
    settings.MCPAUTH_JWKS_CACHE_TTL = 100
    ks = KeySet(get_settings())
    ks.get(rsa_key.kid)
    idp.down = True
    clock.now += 500  # TTL expired and the refresh fails: the cached key still works
    assert ks.get(rsa_key.kid)
    with pytest.raises(InvalidToken):
        ks.get("unknown")


def test_keyset_down_without_cache_is_service_unavailable(idp, rsa_key, clock):
    ks = KeySet(get_settings())
    idp.down = True
    with pytest.raises(ServiceUnavailable) as info:
        ks.get(rsa_key.kid)
    assert info.value.reason == "jwks_down"


def test_keyset_missing_kid_only_with_a_single_key(idp, rsa_key, clock):
    ks = KeySet(get_settings())
    assert ks.get(None)
    idp.keys = [rsa_key, new_key()]
    ks2 = KeySet(get_settings())
    with pytest.raises(InvalidToken):
        ks2.get(None)


def test_parse_jwks_skips_symmetric_and_encryption_keys(rsa_key):
    enc = {**rsa_key.jwk(), "kid": "enc", "use": "enc"}
    oct_key = {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"}
    junk = {"kty": "RSA", "kid": "junk", "n": "!!", "e": "AQAB"}
    keys = tokens._parse_jwks({"keys": [rsa_key.jwk(), enc, oct_key, junk, "nope", 7]})
    assert set(keys) == {rsa_key.kid}
    assert tokens._parse_jwks({"keys": "nope"}) == {}


def test_keyset_is_rebuilt_when_settings_change(settings):
    first = keyset()
    assert keyset() is first
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 5
    second = keyset()
    assert second is not first
    assert second.conf.jwks_refetch_interval == 5


# --- Scalekit preset -------------------------------------------------------------------------


@pytest.fixture
def scalekit_env() -> Iterator[SimpleNamespace]:
    """A loopback stand-in for a Scalekit environment serving ``/keys``."""
    state = SimpleNamespace(key=new_key("sk-key"), fetches=0, url="")

    def route(path: str) -> tuple[int, Any]:
        if path != "/keys":
            return 404, None
        state.fetches += 1
        return 200, {"keys": [state.key.jwk()]}

    with json_server(route) as url:
        state.url = url
        yield state


def _sk_token(key: SigningKey, iss: str, aud: Any, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": iss,
        "aud": aud,
        "sub": "user-1",
        "client_id": "sk-client",
        "oid": "org_123",
        "scope": "todo:read",
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(payload, key.private, algorithm="RS256", headers={"kid": key.kid})


def test_scalekit_preset_wiring(scalekit_env, settings, mint):
    env, rid = scalekit_env.url, "res_1234"
    settings.SCALEKIT_ENVIRONMENT_URL = env + "/"
    settings.SCALEKIT_RESOURCE_ID = rid
    conf = get_settings()
    assert conf.preset == "scalekit"
    assert conf.issuers == (env, f"{env}/resources/{rid}")
    assert conf.audiences == (rid, RESOURCE)
    assert conf.jwks_url == f"{env}/keys"
    assert conf.authorization_servers == (f"{env}/resources/{rid}",)

    token = verify(_sk_token(scalekit_env.key, f"{env}/resources/{rid}", rid))
    assert token.client_id == "sk-client"
    assert token.scopes == frozenset({"todo:read"})
    assert scalekit_env.fetches == 1
    assert verify(_sk_token(scalekit_env.key, env, [RESOURCE]))
    other_issuer = f"{env}/resources/other"
    assert reason_of(_sk_token(scalekit_env.key, other_issuer, rid)) == "wrong_issuer"
    assert reason_of(_sk_token(scalekit_env.key, env, "res_other")) == "wrong_audience"
    # the generic issuer's tokens are no longer accepted: it is not a configured issuer
    assert reason_of(mint()) == "wrong_issuer"
    # one provider under two iss values: one key set, one tenant namespace
    assert verify(_sk_token(scalekit_env.key, env, rid)).issuer == env
    assert verify(_sk_token(scalekit_env.key, f"{env}/resources/{rid}", rid)).issuer == env
    assert list(tokens.keysets()) == [env] and scalekit_env.fetches == 1


def test_scalekit_metadata_document(scalekit_env, settings, client, db):
    env, rid = scalekit_env.url, "res_1234"
    settings.SCALEKIT_ENVIRONMENT_URL = env
    settings.SCALEKIT_RESOURCE_ID = rid
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ):
        doc = client.get(path).json()
        assert doc["authorization_servers"] == [f"{env}/resources/{rid}"]
        assert doc["resource"] == RESOURCE


def test_scalekit_half_configured_is_an_error(settings):
    settings.SCALEKIT_ENVIRONMENT_URL = "https://example.scalekit.dev"
    ids = {m.id for m in check_configuration()}
    assert "mcpauth.E005" in ids
    assert get_settings().preset == "oidc"


# --- startup checks --------------------------------------------------------------------------


def test_no_issuer_with_debug_off_refuses_startup(settings):
    settings.DEBUG = False
    settings.MCPAUTH_ISSUER = ""
    assert get_settings().preset == "none"
    assert "mcpauth.E001" in {m.id for m in check_configuration()}
    with pytest.raises(ImproperlyConfigured, match=r"mcpauth\.E001"):
        assert_startup_ready()


def test_configured_issuer_passes_startup(settings):
    settings.DEBUG = False
    assert not [m for m in check_configuration() if m.is_serious()]
    assert_startup_ready()


def test_verified_tokens_are_cached_but_still_expire(mint, settings, monkeypatch):
    """A token is verified once per key set; exp is still enforced on every use."""
    from mcpauth.identity import tokens

    settings.MCPAUTH_LEEWAY_SECONDS = 0
    raw = mint(ttl=60)
    first = tokens.verify(raw)
    calls = []
    real_decode = tokens.jwt.decode
    monkeypatch.setattr(
        tokens.jwt, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k)
    )
    assert tokens.verify(raw) is first and calls == []
    later = time.time() + 61
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    with pytest.raises(InvalidToken) as exc:
        tokens.verify(raw)
    assert exc.value.reason == "expired"


def test_cached_token_is_dropped_when_its_key_leaves_the_jwks(mint, idp, rsa_key, settings):
    from mcpauth.identity import tokens

    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 0
    raw = mint()
    tokens.verify(raw)
    other = new_key("k-replacement")
    idp.keys = [other]
    tokens.keyset()._refresh()
    with pytest.raises(InvalidToken) as exc:
        tokens.verify(raw)
    assert exc.value.reason == "unknown_key"


# --- security review: JWKS fetches while no key ever loaded; scope separators --------------------


def test_keyset_never_loaded_is_throttled_and_reports_the_last_attempt(idp, clock, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 60
    idp.down = True
    ks = KeySet(get_settings())
    before = idp.jwks_fetches
    for _ in range(20):
        with pytest.raises(ServiceUnavailable) as info:
            ks.get("any")
        assert info.value.reason == "jwks_down"
    with pytest.raises(JWKSFetchError, match="503"):
        ks.ensure_loaded()  # readiness: the last attempt's error, no new fetch
    assert ks.fetch_count == 1  # one attempt for 21 callers
    assert idp.jwks_fetches == before  # (the IdP answered 503 before counting a JWKS fetch)
    idp.down = False
    clock.now += 61
    assert ks.ensure_loaded() == 1 and ks.fetch_count == 2 and ks.last_error is None


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("todo:read todo:write", {"todo:read", "todo:write"}),
        ("todo:read  todo:write ", {"todo:read", "todo:write"}),  # empty pieces ignored
        ("todo:read\u00a0todo:write", {"todo:read\u00a0todo:write"}),  # NBSP: one opaque scope
        ("todo:read\x1ctodo:write", {"todo:read\x1ctodo:write"}),
        ("todo:read\ttodo:write", {"todo:read\ttodo:write"}),
    ],
)
def test_scopes_split_on_space_only(scope, expected):
    assert tokens._scopes({"scope": scope}) == frozenset(expected)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "scope", ["todo:read\u00a0todo:write", "todo:read\x1ctodo:write", "todo:\u2028write"]
)
def test_opaque_scopes_grant_nothing(scope):
    from mcpauth.identity import scopes
    from tests.conftest import seed_todo_scopes

    seed_todo_scopes()
    ScopeMapping.objects.create(scope="todo:*")  # a family wildcard must not match them either
    assert scopes.permissions_for(tokens._scopes({"scope": scope})) == frozenset()
    assert "todos.add_todo" in scopes.permissions_for(frozenset({"todo:write"}))


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"scope": "todo:read\x00x"}, "NUL"),
        ({"scope": " ".join(f"s{i}" for i in range(300))}, "Too many scopes"),
        ({"scope": "x" * 201}, "longer than 200"),
    ],
)
def test_bad_scope_claims_say_what_is_wrong(claims, message):
    with pytest.raises(InvalidToken, match=message):
        tokens._scopes(claims)


# --- issue 16: JWKS fetches back off, reset on success ------------------------------------------


def _fetches_at(ks: KeySet, clock: Clock, kid: str | None, waits: list[float]) -> None:
    """Each wait in ``waits``: no fetch just before it ends, exactly one when it has."""
    for wait in waits:
        count = ks.fetch_count
        clock.now += wait - 0.01
        for _ in range(5):
            try:
                ks.get(kid)
            except (ServiceUnavailable, InvalidToken):
                pass
        assert ks.fetch_count == count, f"fetched before {wait} s had passed"
        clock.now += 0.01
        try:
            ks.get(kid)
        except (ServiceUnavailable, InvalidToken):
            pass
        assert ks.fetch_count == count + 1, f"no fetch once {wait} s had passed"


def test_never_loaded_keys_back_off_from_a_second_to_the_retry_cap(idp, rsa_key, clock, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 60
    idp.down = True
    ks = KeySet(get_settings())
    with pytest.raises(ServiceUnavailable) as info:
        ks.get(rsa_key.kid)
    assert ks.fetch_count == 1 and info.value.retry_after == 1
    _fetches_at(ks, clock, rsa_key.kid, [1, 2, 4, 8, 8, 8])  # capped by MCPAUTH_JWKS_RETRY_MAX
    with pytest.raises(ServiceUnavailable) as info:
        ks.get(rsa_key.kid)
    assert info.value.retry_after == 8
    idp.down = False
    clock.now += 8
    assert ks.get(rsa_key.kid)  # resumed at the next attempt: at most 8 s after recovery
    assert (ks.failures, ks.last_error) == (0, None)
    # the success reset the backoff: the next outage starts again from one second
    settings.MCPAUTH_JWKS_RETRY_MAX = 3
    ks = KeySet(get_settings())
    idp.down = True
    with pytest.raises(ServiceUnavailable):
        ks.get(rsa_key.kid)
    _fetches_at(ks, clock, rsa_key.kid, [1, 2, 3, 3])


def test_refresh_failures_with_cached_keys_back_off_up_to_the_interval(
    idp, rsa_key, clock, settings
):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 20
    ks = KeySet(get_settings())
    assert ks.get(rsa_key.kid)
    idp.down = True
    # unknown kids: the first refetch after the interval, then 1, 2, 4 … up to the interval
    _fetches_at(ks, clock, "unknown", [20, 1, 2, 4, 8, 16, 20, 20])
    assert ks.get(rsa_key.kid)  # the cached key kept working throughout
    idp.down = False
    clock.now += 20
    with pytest.raises(InvalidToken):
        ks.get("unknown")  # fetched (and still unknown): the backoff is reset
    assert ks.failures == 0
    _fetches_at(ks, clock, "unknown", [20])


def test_one_issuers_outage_leaves_the_other_alone(idp, idp_b, rsa_key, b_key, clock, mint_b):
    idp.down = True
    with pytest.raises(ServiceUnavailable):
        tokens.keyset(idp.issuer).get(rsa_key.kid)
    assert verify(mint_b()).issuer == idp_b.issuer
    assert tokens.keyset(idp_b.issuer).failures == 0
    assert tokens.keyset(idp.issuer).failures == 1


def test_a_key_is_only_looked_up_in_its_issuers_key_set(idp, idp_b, mint, rsa_key, b_key):
    assert verify(mint()).issuer == idp.issuer  # A's keys loaded
    assert reason_of(mint(iss=idp_b.issuer, key=rsa_key)) == "unknown_key"
    assert reason_of(mint(iss=idp_b.issuer, key=rsa_key, headers={"kid": b_key.kid})) == (
        "bad_signature"
    )
    assert reason_of(mint(key=b_key)) == "unknown_key"  # and the other way round
    assert set(tokens.keyset(idp_b.issuer).keys) == {b_key.kid}


def test_unreadable_iss_with_several_issuers_is_refused(idp, idp_b, mint, rsa_key):
    assert reason_of(mint(drop=("iss",))) == "missing_claim"
    claims = jwt.decode(mint(), options={"verify_signature": False})
    listed = jwt.api_jws.PyJWS().encode(
        json.dumps({**claims, "iss": [idp.issuer]}).encode(),
        rsa_key.private,
        algorithm="RS256",
        headers={"kid": rsa_key.kid, "typ": "at+jwt"},
    )
    assert reason_of(listed) == "wrong_issuer"
    header, _payload, sig = mint().split(".")
    assert reason_of(f"{header}.bm90LWpzb24.{sig}") == "malformed"
