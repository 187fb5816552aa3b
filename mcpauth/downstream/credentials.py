"""The credential a downstream request carries, for the current caller, per kind.

* ``api_key`` (the guide's 3a): the stored secret of the downstream (the caller's tenant's own
  when ``per_tenant``), decrypted for this request only, in ``header`` (``Authorization: Bearer
  <key>`` unless configured otherwise). Read on every client, so a rotation applies to the next
  call without a restart.
* ``client_credentials`` (3b): the server's own token for the downstream (:mod:`.oauth`).
* ``token_exchange`` (3c): the caller's token exchanged at its issuer (RFC 8693), cached per
  issuer, tenant, subject, client and audience, never past the caller's own token's expiry.
* ``forward`` (the guide's cascading, same trust boundary only): the caller's own token, only
  when its ``aud`` already names the downstream's ``audience``; refused otherwise.
* ``none``: nothing (the call is still bound to the downstream's origin and audited).

:func:`resolve` is sync (database, cache and token endpoint); the async client runs it in a
worker thread. Secrets are read in the platform's context
(:func:`mcpauth.tenant_scope.platform`), never as the tool's tenant-confined database role.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx2

from mcpauth.downstream import caller, crypto, oauth
from mcpauth.downstream.conf import Downstream
from mcpauth.downstream.errors import CredentialRefused, CredentialUnavailable, DownstreamRefused
from mcpauth.tenant_scope import platform

if TYPE_CHECKING:
    from mcpauth.runtime.context import CallContext


@dataclass(frozen=True)
class Credential:
    #: Headers to set on the outgoing request (never shown to the tool).
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    #: ``stored``, ``cache``, ``issuer``, ``caller`` or ``none`` (the audit row's ``obtained``).
    obtained: str
    #: Epoch seconds after which it must be resolved again; ``None``: for the client's life.
    expires_at: float | None = None

    def fresh(self) -> bool:
        return self.expires_at is None or time.time() < self.expires_at


NO_CREDENTIAL = Credential(headers=(), obtained="none")


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _timeout(ds: Downstream) -> httpx2.Timeout:
    return httpx2.Timeout(ds.timeout, connect=ds.connect_timeout)


def stored_secret(ds: Downstream, tenant_id: int | None) -> str:
    """The downstream's stored secret (for ``tenant_id``, or the shared one), decrypted."""
    from mcpauth.downstream.models import DownstreamSecret

    rows = DownstreamSecret.objects.filter(downstream=ds.name)
    if tenant_id is None:
        rows = rows.filter(tenant__isnull=True)
    else:
        rows = rows.filter(tenant_id=tenant_id)
    with platform():
        row = rows.order_by("pk").first()  # (the model's ordering would join the tenant)
    if row is None:
        whose = " for your tenant" if tenant_id is not None else ""
        raise CredentialRefused(
            f"No secret is stored for downstream {ds.name!r}{whose}.", code="no_secret"
        )
    try:
        return row.decrypted()
    except crypto.KeyUnavailable:
        raise CredentialUnavailable(
            f"The stored secret of downstream {ds.name!r} cannot be decrypted with the "
            "configured keys (MCPAUTH_ENCRYPTION_KEYS).",
            code="key_unavailable",
        ) from None


def _api_key(ds: Downstream, call: CallContext) -> Credential:
    tenant_id = call.principal.tenant.id if ds.per_tenant and call.principal else None
    secret = stored_secret(ds, tenant_id)
    value = f"{ds.scheme} {secret}" if ds.scheme else secret
    return Credential(headers=((ds.header, value),), obtained="stored")


def _client_secret(ds: Downstream) -> str:
    return ds.client_secret or stored_secret(ds, None)


def _client_credentials(ds: Downstream, call: CallContext) -> Credential:
    endpoint = ds.token_url or oauth.token_endpoint(ds.issuer, _timeout(ds))
    key = oauth.cache_key("cc", endpoint, ds.client_id, ds.audience, sorted(ds.scopes))

    def fetch() -> oauth.Token:
        form = {
            "grant_type": "client_credentials",
            **oauth.audience_form(ds.audience_param, ds.audience),
        }
        if ds.scopes:
            form["scope"] = " ".join(ds.scopes)
        return oauth.request_token(
            endpoint,
            form,
            client_id=ds.client_id,
            client_secret=_client_secret(ds),
            auth_method=ds.token_auth_method,
            timeout=_timeout(ds),
            what="client credentials",
        )

    token = oauth.obtain(key, fetch)
    expires = time.time() + oauth.ttl_for(token.expires_at, time.time())
    return Credential(headers=_bearer(token.value), obtained=token.obtained, expires_at=expires)


def _caller(call: CallContext) -> tuple[str, dict[str, object]]:
    raw = caller.raw_token()
    if raw is None or call.token is None or call.principal is None:
        raise CredentialRefused(
            "This call carries no caller token to act on.", code="no_caller_token"
        )
    return raw, call.token.claims


def _token_exchange(ds: Downstream, call: CallContext) -> Credential:
    raw, claims = _caller(call)
    issuer = ds.issuer or str(claims.get("iss", "")).rstrip("/")
    caller_exp = float(claims.get("exp", 0) or 0)  # type: ignore[arg-type]
    principal = call.principal
    assert principal is not None
    endpoint = ds.token_url or oauth.token_endpoint(issuer, _timeout(ds))
    key = oauth.cache_key(
        "te",
        issuer,
        principal.tenant.external_id,
        principal.subject,
        principal.client_id,
        ds.client_id,
        ds.audience,
        sorted(ds.scopes),
    )

    def fetch() -> oauth.Token:
        form = {
            "grant_type": oauth.TOKEN_EXCHANGE,
            "subject_token": raw,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "requested_token_type": ds.requested_token_type,
            **oauth.audience_form(ds.audience_param, ds.audience),
        }
        if ds.scopes:
            form["scope"] = " ".join(ds.scopes)
        token = oauth.request_token(
            endpoint,
            form,
            client_id=ds.client_id,
            client_secret=_client_secret(ds),
            auth_method=ds.token_auth_method,
            timeout=_timeout(ds),
            what="token exchange",
        )
        # never cached (nor used) past the caller's own token
        return oauth.Token(token.value, min(token.expires_at, caller_exp), token.obtained)

    token = oauth.obtain(key, fetch)
    if token.expires_at <= time.time():
        raise CredentialRefused(
            "Your token expires before a token for the downstream could be used.",
            code="caller_token_expiring",
        )
    expires = time.time() + oauth.ttl_for(token.expires_at, time.time())
    return Credential(headers=_bearer(token.value), obtained=token.obtained, expires_at=expires)


def _forward(ds: Downstream, call: CallContext) -> Credential:
    raw, claims = _caller(call)
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if ds.audience not in audiences:
        raise DownstreamRefused(
            f"Forwarding your token to downstream {ds.name!r} is refused: its audience does "
            "not name that downstream. Use token_exchange for another audience.",
            code="forward_refused",
        )
    caller_exp = float(claims.get("exp", 0) or 0)  # type: ignore[arg-type]
    return Credential(headers=_bearer(raw), obtained="caller", expires_at=caller_exp)


_RESOLVERS = {
    "api_key": _api_key,
    "client_credentials": _client_credentials,
    "token_exchange": _token_exchange,
    "forward": _forward,
}


def resolve(ds: Downstream, call: CallContext) -> Credential:
    """The credential for one request to ``ds`` by ``call``'s caller (sync: may do I/O)."""
    resolver = _RESOLVERS.get(ds.kind)
    return NO_CREDENTIAL if resolver is None else resolver(ds, call)
