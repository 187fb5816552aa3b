"""The declared downstream systems (``MCPAUTH_DOWNSTREAMS``) and the encryption keys.

Read only through :func:`get_settings`, rebuilt when a setting changes (``override_settings``
and the pytest ``settings`` fixture work), like :mod:`mcpauth.conf`::

    MCPAUTH_DOWNSTREAMS = {
        "crm": {"url": "https://crm.example.com/api", "auth": "api_key", "header": "X-API-Key"},
        "billing": {
            "url": "https://billing.example.com",
            "auth": "client_credentials",
            "issuer": "https://auth.example.com",
            "client_id": "mcp-server",
            "scopes": ["invoices:read"],
        },
        "ledger": {"url": "https://ledger.example.com", "auth": "token_exchange",
                   "client_id": "mcp-server"},
        "mesh": {"url": "https://mesh.internal", "auth": "forward"},
    }
    MCPAUTH_ENCRYPTION_KEYS = ["<newest key>", "<older key, still decrypts>"]

An entry that does not validate is left out of :attr:`DownstreamSettings.downstreams` and
reported by the system check ``mcpauth.E050`` (which also stops ASGI startup).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from django.conf import settings as dj_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

Kind = Literal["api_key", "client_credentials", "token_exchange", "forward", "none"]
KINDS: tuple[str, ...] = ("api_key", "client_credentials", "token_exchange", "forward", "none")
#: A downstream's name: short enough that ``outbound/<name>`` fits the audit row's ``method``.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,54}")
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
AUDIENCE_PARAMS = ("resource", "audience", "both")
MIN_KEY_CHARS = 32

_COMMON = {"url", "auth", "timeout", "connect_timeout"}
_OAUTH = {
    "issuer",
    "token_url",
    "client_id",
    "client_secret",
    "audience",
    "scopes",
    "token_auth_method",
    "audience_param",
}
_KEYS: dict[str, set[str]] = {
    "api_key": _COMMON | {"header", "scheme", "per_tenant"},
    "client_credentials": _COMMON | _OAUTH,
    "token_exchange": _COMMON | _OAUTH | {"requested_token_type"},
    "forward": _COMMON | {"audience"},
    "none": set(_COMMON),
}


@dataclass(frozen=True)
class Downstream:
    """One declared downstream system, validated."""

    name: str
    #: The base URL every request of the bound client goes to (no query, no fragment).
    url: str
    kind: Kind
    #: ``(scheme, host, port)`` of :attr:`url`: the only origin the client may reach.
    origin: tuple[str, str, int]
    #: The path every request must stay under (``/api/`` for ``https://crm/api``).
    path_prefix: str
    #: Seconds for the whole read/write/pool phases, and for connecting.
    timeout: float = 10.0
    connect_timeout: float = 3.0
    # api_key
    header: str = "Authorization"
    scheme: str = "Bearer"
    per_tenant: bool = False
    # client_credentials / token_exchange / forward
    issuer: str = ""
    token_url: str = ""
    client_id: str = ""
    #: From settings; empty means the stored secret of this downstream (``manage.py
    #: downstreams set-secret``) is the client secret.
    client_secret: str = field(default="", repr=False)
    audience: str = ""
    scopes: tuple[str, ...] = ()
    token_auth_method: str = "client_secret_basic"
    audience_param: str = "resource"
    requested_token_type: str = ACCESS_TOKEN_TYPE

    @property
    def stores_secret(self) -> bool:
        """Whether this downstream's secret lives in the database (encrypted)."""
        if self.kind == "api_key":
            return True
        return self.kind in ("client_credentials", "token_exchange") and not self.client_secret

    @property
    def host(self) -> str:
        scheme, host, port = self.origin
        default = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        return shown if port == default else f"{shown}:{port}"


@dataclass(frozen=True)
class DownstreamSettings:
    downstreams: dict[str, Downstream]
    #: ``(name, problem)`` for every entry left out (``mcpauth.E050``).
    problems: tuple[tuple[str, str], ...]
    #: ``MCPAUTH_ENCRYPTION_KEYS``: the first encrypts, every one decrypts.
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)


class _Invalid(ValueError):
    pass


def _origin(url: str, key: str = "url") -> tuple[tuple[str, str, int], str]:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Invalid(f"'{key}' is not a URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"'{key}' must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise _Invalid(f"'{key}' must not contain a query, a fragment or credentials")
    host = parts.hostname.lower().rstrip(".")
    prefix = parts.path if parts.path.endswith("/") else parts.path + "/"
    return (scheme, host, port or (443 if scheme == "https" else 80)), prefix


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _str(entry: dict[str, Any], key: str, default: str = "") -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise _Invalid(f"'{key}' must be a string")
    return value


def _seconds(entry: dict[str, Any], key: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        raise _Invalid(f"'{key}' must be a number of seconds between 0 and 300")
    return float(value)


def _scopes(entry: dict[str, Any]) -> tuple[str, ...]:
    value = entry.get("scopes", ())
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list | tuple) or not all(
        isinstance(s, str) and s and " " not in s for s in value
    ):
        raise _Invalid("'scopes' must be a list of scope strings (or one space-separated string)")
    return tuple(value)


def _absolute(entry: dict[str, Any], key: str) -> str:
    value = _str(entry, key)
    if value:
        _origin(value, key)
    return value.rstrip("/") if key == "issuer" else value


def parse(name: str, entry: Any) -> Downstream:
    """One ``MCPAUTH_DOWNSTREAMS`` entry, validated; raise ``ValueError`` naming the problem."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise _Invalid(
            "the name must be 1-55 characters of a-z, 0-9, '_', '.', '-' (starting with a letter "
            "or digit)"
        )
    if not isinstance(entry, dict):
        raise _Invalid("the entry must be a dict")
    kind = entry.get("auth")
    if kind not in KINDS:
        raise _Invalid(f"'auth' must be one of {', '.join(KINDS)}")
    if "url" not in entry:
        raise _Invalid("'url' is required")
    unknown = sorted(set(entry) - _KEYS[kind])
    if unknown:
        raise _Invalid(f"unknown key(s) for auth {kind!r}: {', '.join(map(repr, unknown))}")
    url = _str(entry, "url")
    origin, prefix = _origin(url)
    values: dict[str, Any] = {
        "name": name,
        "url": url,
        "kind": kind,
        "origin": origin,
        "path_prefix": prefix,
        "timeout": _seconds(entry, "timeout", 10.0),
        "connect_timeout": _seconds(entry, "connect_timeout", 3.0),
    }
    if kind == "api_key":
        header = _str(entry, "header", "Authorization")
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
            raise _Invalid("'header' must be an HTTP header name")
        per_tenant = entry.get("per_tenant", False)
        if not isinstance(per_tenant, bool):
            raise _Invalid("'per_tenant' must be true or false")
        default_scheme = "Bearer" if header.lower() == "authorization" else ""
        values.update(
            header=header, scheme=_str(entry, "scheme", default_scheme), per_tenant=per_tenant
        )
    elif kind in ("client_credentials", "token_exchange"):
        issuer, token_url = _absolute(entry, "issuer"), _absolute(entry, "token_url")
        if kind == "client_credentials" and not (issuer or token_url):
            raise _Invalid("client_credentials needs 'issuer' (metadata discovery) or 'token_url'")
        client_id = _str(entry, "client_id")
        if not client_id:
            raise _Invalid("'client_id' is required")
        method = _str(entry, "token_auth_method", "client_secret_basic")
        if method not in TOKEN_AUTH_METHODS:
            raise _Invalid(f"'token_auth_method' must be one of {', '.join(TOKEN_AUTH_METHODS)}")
        audience_param = _str(entry, "audience_param", "resource")
        if audience_param not in AUDIENCE_PARAMS:
            raise _Invalid(f"'audience_param' must be one of {', '.join(AUDIENCE_PARAMS)}")
        values.update(
            issuer=issuer,
            token_url=token_url,
            client_id=client_id,
            client_secret=_str(entry, "client_secret"),
            audience=_str(entry, "audience") or url,
            scopes=_scopes(entry),
            token_auth_method=method,
            audience_param=audience_param,
        )
        if kind == "token_exchange":
            values["requested_token_type"] = (
                _str(entry, "requested_token_type") or ACCESS_TOKEN_TYPE
            )
    elif kind == "forward":
        values["audience"] = _str(entry, "audience") or url
    return Downstream(**values)


def _build() -> DownstreamSettings:
    raw = getattr(dj_settings, "MCPAUTH_DOWNSTREAMS", None) or {}
    downstreams: dict[str, Downstream] = {}
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        problems.append(("MCPAUTH_DOWNSTREAMS", "must be a dict of name -> entry"))
        raw = {}
    for name, entry in raw.items():
        try:
            downstreams[name] = parse(name, entry)
        except ValueError as exc:
            problems.append((str(name), str(exc)))
    keys = getattr(dj_settings, "MCPAUTH_ENCRYPTION_KEYS", None) or ()
    if isinstance(keys, str):
        keys = keys.replace(",", " ").split()
    return DownstreamSettings(
        downstreams=downstreams,
        problems=tuple(problems),
        encryption_keys=tuple(str(k) for k in keys),
    )


@lru_cache(maxsize=1)
def get_settings() -> DownstreamSettings:
    return _build()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("MCPAUTH_"):
        get_settings.cache_clear()
