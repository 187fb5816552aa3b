"""Access tokens for downstreams from an OAuth token endpoint, cached for every worker.

* **client_credentials** (RFC 6749 §4.4): the server's own client at the configured issuer,
  asking for the downstream as ``resource`` (RFC 8707) and/or ``audience``, with its scopes.
* **token_exchange** (RFC 8693): the caller's token as ``subject_token`` at the caller's issuer
  (or the configured one), for the downstream; the issuer answers with a token for the
  downstream that names the caller as subject and this server as actor (``act``).

The token endpoint comes from ``token_url`` or the issuer's metadata (RFC 8414, then OpenID
discovery), cached per process. Tokens go into Django's ``default`` cache (Redis when
``REDIS_URL`` is set: shared by every worker), encrypted with a key derived from
``MCPAUTH_ENCRYPTION_KEYS`` when one is configured, until shortly before they expire
(:func:`ttl_for`). While one worker fetches a token the others wait for it (at most
``LOCK_WAIT`` seconds) instead of fetching their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx2
from django.core.cache import caches

from mcpauth.downstream import crypto
from mcpauth.downstream.errors import CredentialRefused, CredentialUnavailable

log = logging.getLogger(__name__)

CACHE_ALIAS = "default"
CACHE_PREFIX = "mcpauth:downstream:token:"
#: How long a worker waits for another worker's fetch of the same token, at most.
LOCK_WAIT = 3.0
LOCK_TTL = 15
METADATA_TTL = 3600.0
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_metadata: dict[str, tuple[float, str]] = {}
_metadata_lock = threading.Lock()


@dataclass(frozen=True)
class Token:
    value: str
    #: Epoch seconds after which it must not be used.
    expires_at: float
    #: ``cache`` or ``issuer``.
    obtained: str


def ttl_for(expires_at: float, now: float) -> float:
    """Seconds a token may stay cached: until shortly before it expires (10% of what is left,
    at least 1 s and at most 60 s before)."""
    left = expires_at - now
    return left - min(60.0, max(1.0, left * 0.1))


def cache_key(*parts: object) -> str:
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()
    return CACHE_PREFIX + digest


# --- metadata --------------------------------------------------------------------------------


def token_endpoint(issuer: str, timeout: httpx2.Timeout) -> str:
    """The issuer's ``token_endpoint`` (RFC 8414 metadata, then OpenID discovery)."""
    now = time.monotonic()
    hit = _metadata.get(issuer)
    if hit is not None and now - hit[0] < METADATA_TTL:
        return hit[1]
    parts = urllib.parse.urlsplit(issuer)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    candidates = [f"{origin}/.well-known/oauth-authorization-server{path}"]
    candidates.append(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
    problems: list[str] = []
    with httpx2.Client(timeout=timeout, trust_env=False, follow_redirects=False) as http:
        for url in candidates:
            try:
                resp = http.get(url, headers={"accept": "application/json"})
                meta = resp.json() if resp.status_code == 200 else None
            except (httpx2.HTTPError, ValueError) as exc:
                problems.append(f"{type(exc).__name__}")
                continue
            endpoint = meta.get("token_endpoint") if isinstance(meta, dict) else None
            if (
                isinstance(endpoint, str)
                and endpoint.startswith(("https://", "http://"))
                and meta is not None
                and str(meta.get("issuer", "")).rstrip("/") == issuer.rstrip("/")
            ):
                with _metadata_lock:
                    _metadata[issuer] = (now, endpoint)
                return endpoint
            problems.append(f"HTTP {resp.status_code}")
    log.warning("no token endpoint for issuer %s: %s", issuer, ", ".join(problems))
    raise CredentialUnavailable(
        "The identity provider's metadata (token endpoint) is unavailable.",
        code="issuer_unavailable",
    )


def clear_metadata() -> None:
    with _metadata_lock:
        _metadata.clear()


# --- the shared cache --------------------------------------------------------------------------


def _cache() -> Any:
    return caches[CACHE_ALIAS]


def cached(key: str) -> Token | None:
    try:
        entry = _cache().get(key)
    except Exception:
        log.warning("token cache unavailable", exc_info=True)
        return None
    if not isinstance(entry, dict) or entry.get("exp", 0) <= time.time():
        return None
    try:
        if "k" in entry:
            value = crypto.decrypt(
                entry["k"], entry["v"], purpose=crypto.TOKEN_CACHE, aad=key.encode()
            ).decode()
        else:
            value = entry["t"]
    except (crypto.KeyUnavailable, KeyError, TypeError):
        return None  # a key rotated away: fetch afresh
    return Token(value=value, expires_at=float(entry["exp"]), obtained="cache")


def store(key: str, token: Token) -> None:
    ttl = ttl_for(token.expires_at, time.time())
    if ttl < 1:
        return
    entry: dict[str, Any] = {"exp": time.time() + ttl}
    if crypto.available():
        entry["k"], entry["v"] = crypto.encrypt(
            token.value.encode(), purpose=crypto.TOKEN_CACHE, aad=key.encode()
        )
    else:
        entry["t"] = token.value
    try:
        _cache().set(key, entry, timeout=max(1, int(ttl)))
    except Exception:
        log.warning("token cache unavailable", exc_info=True)


def _lock(key: str) -> bool:
    try:
        return bool(_cache().add(f"{key}:lock", 1, timeout=LOCK_TTL))
    except Exception:
        return True  # no shared cache: fetch


def _unlock(key: str) -> None:
    try:
        _cache().delete(f"{key}:lock")
    except Exception:  # it expires after LOCK_TTL anyway
        log.debug("could not release the token fetch lock", exc_info=True)


def obtain(key: str, fetch: Any) -> Token:
    """The cached token for ``key``, else ``fetch()``'s (stored for the next caller)."""
    hit = cached(key)
    if hit is not None:
        return hit
    if not _lock(key):
        deadline = time.monotonic() + LOCK_WAIT
        while time.monotonic() < deadline:  # another worker is fetching this very token
            time.sleep(0.05)
            hit = cached(key)
            if hit is not None:
                return hit
    try:
        token: Token = fetch()
        store(key, token)
        return token
    finally:
        _unlock(key)


# --- the token endpoint ------------------------------------------------------------------------


def _basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both parts form-urlencoded, then Basic."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def request_token(
    endpoint: str,
    form: dict[str, str],
    *,
    client_id: str,
    client_secret: str,
    auth_method: str,
    timeout: httpx2.Timeout,
    what: str,
) -> Token:
    """POST ``form`` to ``endpoint`` with client authentication; the access token, or raise
    :class:`CredentialRefused` (the issuer said no) / :class:`CredentialUnavailable`."""
    headers = {"accept": "application/json"}
    form = dict(form)
    if auth_method == "client_secret_post":
        form.update(client_id=client_id, client_secret=client_secret)
    else:
        headers["authorization"] = _basic(client_id, client_secret)
    try:
        with httpx2.Client(timeout=timeout, trust_env=False, follow_redirects=False) as http:
            resp = http.post(endpoint, data=form, headers=headers)
    except httpx2.HTTPError as exc:
        raise CredentialUnavailable(
            f"The identity provider did not answer the {what} request ({type(exc).__name__}).",
            code="issuer_unavailable",
        ) from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 500 or not isinstance(body, dict):
        raise CredentialUnavailable(
            f"The identity provider failed the {what} request (HTTP {resp.status_code}).",
            code="issuer_error",
            status=resp.status_code,
        )
    if resp.status_code != 200:
        error = body.get("error")
        error = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "refused"
        raise CredentialRefused(
            f"The identity provider refused the {what} request ({error}).",
            code="credential_refused",
            status=resp.status_code,
        )
    value = body.get("access_token")
    token_type = str(body.get("token_type", "")).lower()
    if not isinstance(value, str) or not value or token_type not in ("bearer", "n_a"):
        raise CredentialUnavailable(
            f"The identity provider's answer to the {what} request has no bearer token.",
            code="issuer_error",
            status=resp.status_code,
        )
    expires_in = body.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = 60  # unknown lifetime: kept briefly
    return Token(value=value, expires_at=time.time() + float(expires_in), obtained="issuer")


def audience_form(param: str, audience: str) -> dict[str, str]:
    if param == "both":
        return {"resource": audience, "audience": audience}
    return {param: audience}
