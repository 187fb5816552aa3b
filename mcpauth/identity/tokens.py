"""JWT in, frozen :class:`Principal` out.

:func:`verify` checks a bearer token against the JWKS of the issuer it names, which must be a
configured one (signature with an explicit asymmetric allow-list, ``iss``, ``aud``,
``exp``/``nbf``/``iat``), and extracts the identity claims. A key is only looked up in the key
set of the token's issuer (:mod:`mcpauth.identity.jwks`): a token claiming issuer B signed with
a key from issuer A's JWKS is refused. :func:`principal_for` adds the tenant
(``mcpauth.identity.tenancy``) and the permissions the scopes grant
(``mcpauth.identity.scopes``), producing the one ``Principal`` a request carries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK

from mcpauth.conf import IssuerConfig, MCPAuthSettings, get_settings
from mcpauth.exceptions import InvalidToken, ServiceUnavailable
from mcpauth.identity.jwks import (  # noqa: F401  (re-exported: the key set used to live here)
    JWKSFetchError,
    KeySet,
    _http_get_json,
    _parse_jwks,
    discover_jwks_uri,
    keyset,
    keysets,
)

# the request's value types lived here; their home is now the leaf module mcpauth.values
from mcpauth.values import Principal, TenantRef, VerifiedToken  # noqa: F401


def fingerprint(raw: str) -> str:
    """A short, non-reversible token identifier for logs and audit rows."""
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:16]


# --- verification -------------------------------------------------------------------------

_KEY_FAMILIES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _str_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 255 or not value.isprintable():
        raise InvalidToken(f"Claim '{name}' is malformed.", reason="bad_claim")
    return value


#: RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), separated by %x20 only.
MAX_SCOPE_CHARS = 200
MAX_SCOPES = 256


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """The token's scopes: ``scope``/``scp`` strings split on U+0020 only, or string lists.

    Any other whitespace or control character (U+00A0, U+001C ...) does not separate scopes: a
    scope containing one is kept as one opaque string, which no mapping matches
    (``mcpauth.identity.scopes.is_matchable``). A NUL is refused outright (nothing can store it).
    """
    found: set[str] = set()
    for name in ("scope", "scp", "scopes", "permissions"):
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, str):
            found.update(part for part in value.split(" ") if part)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            found.update(v for v in value if v)
        else:
            raise InvalidToken(f"Claim '{name}' is malformed.", reason="bad_claim")
    if any("\x00" in s for s in found):
        raise InvalidToken("Scope claim contains a NUL character.", reason="bad_claim")
    if len(found) > MAX_SCOPES:
        raise InvalidToken(f"Too many scopes (more than {MAX_SCOPES}).", reason="bad_claim")
    if any(len(s) > MAX_SCOPE_CHARS for s in found):
        raise InvalidToken(
            f"A scope is longer than {MAX_SCOPE_CHARS} characters.", reason="bad_claim"
        )
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class _Verified:
    token: VerifiedToken
    conf: MCPAuthSettings
    keys: KeySet
    key: PyJWK
    kid: str | None
    exp: float
    nbf: float


#: Tokens whose signature and claims were verified, by token string. Clients reuse a token for
#: every call until it expires, so the signature check and the parsing are done once per token
#: and key set; ``exp``/``nbf`` are checked again on every use.
_verified: dict[str, _Verified] = {}
_VERIFIED_MAX = 10_000


def _from_cache(raw: str, conf: MCPAuthSettings) -> VerifiedToken | None:
    hit = _verified.get(raw)
    if hit is None:
        return None
    ks = keysets().get(hit.token.issuer)
    if hit.conf is not conf or hit.keys is not ks or ks.keys.get(hit.kid) is not hit.key:
        _verified.pop(raw, None)  # settings changed or the key left the JWKS: verify afresh
        return None
    now = time.time()
    if now > hit.exp + conf.leeway_seconds:
        _verified.pop(raw, None)
        raise InvalidToken("Token expired.", reason="expired")
    if now < hit.nbf - conf.leeway_seconds:
        raise InvalidToken("Token not yet valid.", reason="not_yet_valid")
    if ks.fetched_at is not None and time.monotonic() - ks.fetched_at > conf.jwks_cache_ttl:
        return None  # keys are due for a refresh: take the full path, which refreshes them
    return hit.token


def clear_cache() -> None:
    _verified.clear()


def _issuer_of(raw: str, conf: MCPAuthSettings) -> IssuerConfig:
    """The configured issuer the token names (unverified: it only picks the keys to verify
    with). The keys are that issuer's only, so another issuer's key is an unknown key here.

    With a single issuer, a token whose ``iss`` cannot be read is checked against it, so the
    refusal names what PyJWT finds (a bad signature, a missing claim) as before.
    """
    try:
        iss = unverified_issuer(raw)
    except InvalidToken:
        if len(conf.issuer_configs) == 1:
            return conf.issuer_configs[0]
        raise
    issuer = conf.issuer_for(iss)
    if issuer is None:
        raise InvalidToken("Token issuer not accepted.", reason="wrong_issuer")
    return issuer


def unverified_issuer(raw: str) -> str:
    """The ``iss`` a compact JWS claims, read without verifying anything (to pick its keys)."""
    try:
        segment = raw.split(".")[1]
        payload = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, ValueError, binascii.Error) as exc:
        raise InvalidToken("Malformed token.", reason="malformed") from exc
    if not isinstance(payload, dict):
        raise InvalidToken("Malformed token.", reason="malformed")
    iss = payload.get("iss")
    if iss is None:
        raise InvalidToken("Token lacks the 'iss' claim.", reason="missing_claim")
    if not isinstance(iss, str):
        raise InvalidToken("Token issuer not accepted.", reason="wrong_issuer")
    return iss


def verify(raw: str, *, refetch: bool = True) -> VerifiedToken:
    """Validate a bearer token; raise :class:`InvalidToken` (401) with a reason on failure.

    ``refetch=False``: an unknown key id is refused without refetching the JWKS.
    """
    conf = get_settings()
    if conf.preset == "none":
        raise ServiceUnavailable("No identity provider is configured.", reason="not_configured")
    if len(raw) > conf.max_token_bytes:
        raise InvalidToken("Token too large.", reason="oversized")
    cached = _from_cache(raw, conf)
    if cached is not None:
        return cached
    if raw.count(".") != 2:
        raise InvalidToken("Malformed token.", reason="malformed")
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.InvalidTokenError as exc:
        raise InvalidToken("Malformed token.", reason="malformed") from exc
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in conf.algorithms:
        raise InvalidToken("Token algorithm not allowed.", reason="disallowed_alg")
    if "crit" in header:
        raise InvalidToken("Unsupported critical header.", reason="unsupported_crit")
    typ = header.get("typ")
    if typ is None:
        if conf.require_typ:
            raise InvalidToken("Token type missing.", reason="bad_typ")
    elif not isinstance(typ, str) or typ.lower() not in conf.accepted_types:
        raise InvalidToken("Token type not accepted.", reason="bad_typ")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
        raise InvalidToken("Malformed key id.", reason="malformed")

    issuer = _issuer_of(raw, conf)
    keys = keyset(issuer.issuer)
    key = keys.get(kid, refetch=refetch)
    if _KEY_FAMILIES.get(alg[:2]) != key.key_type:
        raise InvalidToken("Token algorithm does not match its key.", reason="disallowed_alg")
    try:
        claims = jwt.decode(
            raw,
            key=key.key,
            algorithms=[alg],
            audience=list(conf.audiences),
            issuer=list(issuer.accepted),  # checked again once the signature is verified
            leeway=conf.leeway_seconds,
            options={"require": ["exp", "iss", "aud"], "verify_iat": True},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("Token expired.", reason="expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise InvalidToken("Token not yet valid.", reason="not_yet_valid") from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidToken("Token audience is not this resource.", reason="wrong_audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise InvalidToken("Token issuer not accepted.", reason="wrong_issuer") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"Token lacks the '{exc.claim}' claim.", reason="missing_claim") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken("Token signature invalid.", reason="bad_signature") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        raise InvalidToken("Malformed token.", reason="malformed") from exc

    client_id = next(
        (c for c in (_str_claim(claims, n) for n in ("client_id", "azp", "cid")) if c), None
    )
    if client_id is None:
        raise InvalidToken("Token names no client (client_id/azp/cid).", reason="missing_claim")
    subject = _str_claim(claims, "sub") or client_id
    jti = claims.get("jti")
    token_id = jti if isinstance(jti, str) and 0 < len(jti) <= 128 else fingerprint(raw)
    verified = VerifiedToken(
        claims=claims,
        client_id=client_id,
        subject=subject,
        scopes=_scopes(claims),
        token_id=token_id,
        issuer=issuer.issuer,
    )
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[raw] = _Verified(
        token=verified,
        conf=conf,
        keys=keys,
        key=key,
        kid=kid,
        exp=float(claims["exp"]),
        nbf=float(claims.get("nbf", 0) or 0),
    )
    return verified


def principal_for(token: VerifiedToken) -> Principal:
    """The request's Principal: the verified token, its tenant and its mapped permissions.

    Raises what tenant resolution raises (unknown or suspended tenant).
    """
    from mcpauth.identity import scopes, tenancy

    return Principal(
        client_id=token.client_id,
        subject=token.subject,
        tenant=tenancy.resolve(token),
        scopes=token.scopes,
        permissions=scopes.permissions_for(token.scopes),
        token_id=token.token_id,
        issuer=token.issuer,
    )
