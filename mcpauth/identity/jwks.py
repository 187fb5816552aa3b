"""Each issuer's signing keys: fetched from its own JWKS, cached, refreshed, backed off.

One :class:`KeySet` per configured issuer (:func:`keysets`): a key is only ever looked up in
the key set of the issuer the token names, so it is accepted only for the issuer whose JWKS
served it.

Fetching (per key set, whatever the reason: first load, unknown ``kid``, expiry, readiness):

* **single flight**: one fetch at a time; a caller that finds one in progress waits for it (at
  most ``MCPAUTH_JWKS_TIMEOUT`` + 1 s) and uses its outcome instead of fetching again;
* **after a success** the next fetch waits ``MCPAUTH_JWKS_REFETCH_INTERVAL`` seconds (an
  unknown ``kid`` cannot make the server hammer the IdP); keys are refreshed after
  ``MCPAUTH_JWKS_CACHE_TTL``;
* **after a failure** attempts back off exponentially from one second: 1, 2, 4 … seconds, up to
  ``MCPAUTH_JWKS_REFETCH_INTERVAL``, and while the issuer's keys never loaded up to
  ``MCPAUTH_JWKS_RETRY_MAX`` (8 s) as well, so service resumes within that long of the JWKS
  answering again. A success resets the backoff. During a wait, callers get the last attempt's
  error (503 while no key ever loaded) without fetching; cached keys keep working.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import jwt
from jwt import PyJWK

from mcpauth.caching.localcache import require_io
from mcpauth.conf import IssuerConfig, MCPAuthSettings, get_settings
from mcpauth.exceptions import InvalidToken, ServiceUnavailable

#: The first retry after a failed fetch, in seconds (doubling after each further failure).
BACKOFF_BASE = 1.0


class JWKSFetchError(Exception):
    pass


def _http_get_json(url: str, timeout: float) -> dict[str, Any]:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise JWKSFetchError(f"refusing non-HTTP(S) URL {url!r}")
    req = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            body = resp.read(1_048_576)
        data = json.loads(body)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise JWKSFetchError(f"GET {url} failed: {exc}") from exc
    if not isinstance(data, dict):
        raise JWKSFetchError(f"GET {url}: expected a JSON object")
    return data


def discover_jwks_uri(issuer: str, timeout: float) -> str:
    """Find ``jwks_uri`` in the issuer's OpenID or OAuth metadata (RFC 8414)."""
    parts = urllib.parse.urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    candidates = [
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    ]
    if path:
        candidates.append(f"{origin}/.well-known/openid-configuration{path}")
    errors = []
    for url in candidates:
        try:
            meta = _http_get_json(url, timeout)
        except JWKSFetchError as exc:
            errors.append(str(exc))
            continue
        uri = meta.get("jwks_uri")
        if isinstance(uri, str) and uri:
            return uri
        errors.append(f"{url}: no jwks_uri")
    raise JWKSFetchError("; ".join(errors))


def _parse_jwks(data: dict[str, Any]) -> dict[str | None, PyJWK]:
    keys: dict[str | None, PyJWK] = {}
    for entry in data.get("keys", []) if isinstance(data.get("keys"), list) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # never accept symmetric ("oct") keys
        try:
            jwk = PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        keys[entry.get("kid")] = jwk
    return keys


class KeySet:
    """One issuer's cached signing keys (see the module docstring for when it fetches)."""

    def __init__(self, conf: MCPAuthSettings, issuer: IssuerConfig | None = None) -> None:
        self.conf = conf
        if issuer is None:
            issuer = conf.issuer_configs[0] if conf.issuer_configs else IssuerConfig("", ())
        self.issuer = issuer
        self.keys: dict[str | None, PyJWK] = {}
        self.fetched_at: float | None = None
        self.last_attempt: float = float("-inf")
        #: no fetch is attempted before this (monotonic) time: the refetch throttle or backoff
        self.next_attempt: float = float("-inf")
        self.fetch_count = 0
        #: failed attempts since the last success (the backoff's exponent)
        self.failures = 0
        #: why the last attempt failed (None when it succeeded or none was made)
        self.last_error: str | None = None
        self._jwks_uri = issuer.jwks_url
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether keys were ever loaded (they keep working when a later fetch fails)."""
        return self.fetched_at is not None or bool(self.keys)

    def backoff(self) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row."""
        cap = float(self.conf.jwks_refetch_interval)
        if not self.loaded:
            cap = min(cap, self.conf.jwks_retry_max)
        return min(BACKOFF_BASE * 2 ** min(self.failures - 1, 30), cap)

    def _load(self) -> dict[str | None, PyJWK]:
        if self.issuer.dev:
            from mcpauth.identity import devissuer

            return _parse_jwks(devissuer.jwks())
        if not self._jwks_uri:
            self._jwks_uri = discover_jwks_uri(self.issuer.issuer, self.conf.jwks_timeout)
        return _parse_jwks(_http_get_json(self._jwks_uri, self.conf.jwks_timeout))

    def _waiting(self) -> bool:
        """True while no fetch may start (throttle or backoff); raises while none ever loaded."""
        if time.monotonic() >= self.next_attempt:
            return False
        if not self.loaded:
            raise JWKSFetchError(self.last_error or "no signing keys loaded yet")
        return True

    def _refresh(self) -> None:
        if self._waiting():  # no I/O needed to refuse: this also works on the event loop
            return
        require_io()
        if not self._lock.acquire(timeout=self.conf.jwks_timeout + 1.0):
            # another caller's fetch is still running: do not queue up another one
            if not self.loaded:
                raise JWKSFetchError(self.last_error or "no signing keys loaded yet")
            return
        try:
            if self._waiting():  # the fetch we waited for decided it
                return
            self._fetch()
        finally:
            self._lock.release()

    def _fetch(self) -> None:
        from mcpauth.observability import metrics

        self.last_attempt = time.monotonic()
        self.fetch_count += 1
        try:
            keys = self._load()
        except JWKSFetchError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self.next_attempt = time.monotonic() + self.backoff()
            metrics.jwks_refresh("error")
            if not self.loaded:
                raise
            return
        metrics.jwks_refresh("ok")
        self.keys = keys
        self.fetched_at = self.last_attempt
        self.failures = 0
        self.last_error = None
        self.next_attempt = time.monotonic() + self.conf.jwks_refetch_interval

    def get(self, kid: str | None, *, refetch: bool = True) -> PyJWK:
        """The key for ``kid``; an unknown one triggers a (throttled) refetch unless not
        ``refetch``."""
        now = time.monotonic()
        if self.fetched_at is None or now - self.fetched_at > self.conf.jwks_cache_ttl:
            try:
                self._refresh()
            except JWKSFetchError as exc:
                raise ServiceUnavailable(
                    "The identity provider's signing keys are unavailable.",
                    reason="jwks_down",
                    retry_after=max(1, round(self.next_attempt - time.monotonic())),
                ) from exc
        key = self._lookup(kid)
        if key is None and refetch:
            try:
                self._refresh()
            except JWKSFetchError:
                pass
            key = self._lookup(kid)
        if key is None:
            raise InvalidToken("Unknown signing key.", reason="unknown_key")
        return key

    def ensure_loaded(self) -> int:
        """Fetch keys if none are cached (for readiness, single flight and backed off like every
        fetch); return how many are cached. Raises ``JWKSFetchError`` with the last attempt's
        error while none is."""
        if self.fetched_at is None:
            self._refresh()
        return len(self.keys)

    def state(self) -> dict[str, Any]:
        """What readiness reports about this issuer's keys (no URLs, no error text)."""
        now = time.monotonic()
        return {
            "keys": len(self.keys),
            "loaded": self.loaded,
            "failures": self.failures,
            "age_s": round(now - self.fetched_at, 1) if self.fetched_at is not None else None,
            "retry_in_s": round(max(0.0, self.next_attempt - now), 1) if self.failures else None,
        }

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)


#: ``(settings, {issuer: KeySet})``, swapped whole when the settings change.
_current: tuple[MCPAuthSettings, dict[str, KeySet]] | None = None
_keysets_lock = threading.Lock()


def keysets() -> dict[str, KeySet]:
    """The process-wide key sets of the current settings, by issuer (rebuilt when they change)."""
    global _current
    conf = get_settings()
    current = _current
    if current is None or current[0] is not conf:
        with _keysets_lock:
            if _current is None or _current[0] is not conf:
                _current = (conf, {cfg.issuer: KeySet(conf, cfg) for cfg in conf.issuer_configs})
            current = _current
    return current[1]


def keyset(issuer: str | None = None) -> KeySet:
    """The key set of ``issuer`` (default: the first configured issuer)."""
    sets = keysets()
    if issuer is None:
        if not sets:
            return KeySet(get_settings())  # no issuer configured: nothing to fetch
        return next(iter(sets.values()))
    return sets[issuer]
