"""Typed, documented settings for mcpauth.

Read settings only through :func:`get_settings`. The object is built lazily from
``django.conf.settings`` and rebuilt whenever a setting changes (``setting_changed``), so
``override_settings`` and the pytest ``settings`` fixture behave as expected. Nothing here
mutates ``django.conf.settings``.

Identity-provider presets, in order of precedence:

* **scalekit** when ``SCALEKIT_ENVIRONMENT_URL`` and ``SCALEKIT_RESOURCE_ID`` are set;
* **oidc** when ``MCPAUTH_ISSUER`` or ``MCPAUTH_ISSUERS`` is set (one or more issuers);
* **dev** (a local RSA key, ``MCPAUTH_DEV_KEY_PATH``) only when neither is set and ``DEBUG``
  is on;
* **none** otherwise, which the system check ``mcpauth.E001`` reports and startup refuses.

Only prefixed names are read (``MCPAUTH_*``; the Scalekit preset's ``SCALEKIT_*``; Django's own
``DEBUG`` and ``ALLOWED_HOSTS``; django-ratelimit's ``RATELIMIT_USE_CACHE``), each with a default
that works in any project. The unprefixed ``BASE_URL`` of earlier versions is still accepted
when ``MCPAUTH_BASE_URL`` is not set.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from django.conf import settings as dj_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

Preset = Literal["scalekit", "oidc", "dev", "none"]

#: Asymmetric algorithms only. HMAC and ``none`` can never be enabled: an HS* entry in
#: ``MCPAUTH_ALGORITHMS`` is ignored and reported by ``mcpauth.E003``.
SAFE_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


_MISSING = object()


def setting(name: str, *legacy: str, default: Any = None) -> Any:
    """The Django setting ``name``, else the first of its ``legacy`` names that is set, else
    ``default``."""
    for candidate in (name, *legacy):
        value = getattr(dj_settings, candidate, _MISSING)
        if value is not _MISSING:
            return value
    return default


DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_PATH = "/mcp"


def normalize_path(value: Any) -> str:
    """``MCPAUTH_PATH`` as served: one leading slash, no trailing one (``"mcp/"`` → ``/mcp``)."""
    text = str(value or "").strip()
    return "/" + text.strip("/") if text.strip("/") else ""


def split_list(value: Any) -> tuple[str, ...]:
    """A setting given as a list, or as one string of comma- or space-separated items."""
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    return tuple(str(v) for v in value)


def parse_rate(rate: str) -> tuple[int, int]:
    """Parse ``"120/m"`` (or ``"10/5s"``) into ``(count, seconds)``; raise ``ValueError``."""
    match = _RATE_RE.match(rate or "")
    if not match:
        raise ValueError(f"invalid rate {rate!r}: use N/s, N/m, N/h or N/d")
    count, multiplier, unit = match.groups()
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit] * int(multiplier or 1)
    return int(count), seconds


OriginKey = tuple[str, str, int]


def origin_key(origin: str) -> OriginKey | None:
    """``(scheme, host, port)`` of an ``http(s)`` origin, normalised as Host names are: lower
    case, no trailing dot, the scheme's default port filled in; ``None`` for anything else."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = parts.hostname.lower().rstrip(".")
    return scheme, host, port or (443 if scheme == "https" else 80)


@dataclass(frozen=True)
class IssuerConfig:
    """One identity provider: its keys and its tenants are its own.

    A signing key is accepted only for the issuer whose JWKS served it; tenants, client bindings,
    client policies and audit rows are namespaced by :attr:`issuer`.
    """

    #: The issuer's identifier (its ``iss``); the namespace of its tenants and clients.
    issuer: str
    #: Every ``iss`` value accepted for this issuer, :attr:`issuer` first (Scalekit's
    #: resource-scoped issuer is the same provider).
    accepted: tuple[str, ...]
    #: Explicit JWKS URL; empty: discovered from the issuer's metadata.
    jwks_url: str = ""
    #: The development issuer, whose keys are in process (no HTTP).
    dev: bool = False


def parse_issuers(value: Any) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """``MCPAUTH_ISSUERS`` → ``((issuer, jwks_url or ""), ...)`` and the problems found.

    Accepted forms: a mapping ``{issuer: jwks_url or ""}``; a list whose items are an issuer, an
    ``"ISSUER=JWKS_URL"`` string, an ``(issuer, jwks_url)`` pair or ``{"issuer": ...,
    "jwks_url": ...}``; or one string of such items separated by spaces, commas or newlines
    (what the environment variable holds). An issuer has no query (OIDC), so the first ``=``
    separates it from its JWKS URL.
    """
    if not value:
        return (), ()
    raw: list[Any]
    if isinstance(value, str):
        raw = [v for v in value.replace(",", " ").split() if v]
    elif isinstance(value, dict):
        raw = [(k, v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        raw = list(value)
    else:
        return (), (f"MCPAUTH_ISSUERS must be a mapping, a list or a string, not {type(value)}",)
    entries: dict[str, str] = {}
    problems: list[str] = []
    for item in raw:
        issuer: Any
        jwks: Any
        if isinstance(item, str):
            issuer, _, jwks = item.partition("=")
        elif isinstance(item, dict):
            issuer, jwks = item.get("issuer"), item.get("jwks_url") or ""
        elif isinstance(item, list | tuple) and len(item) == 2:
            issuer, jwks = item[0], item[1] or ""
        else:
            problems.append(f"MCPAUTH_ISSUERS entry {item!r} is not an issuer or a pair")
            continue
        if not isinstance(issuer, str) or not isinstance(jwks, str):
            problems.append(f"MCPAUTH_ISSUERS entry {item!r} is not made of strings")
            continue
        issuer, jwks = issuer.strip(), jwks.strip()
        problem = url_problem(issuer, "issuer") or (jwks and url_problem(jwks, "JWKS URL"))
        if problem:
            problems.append(f"MCPAUTH_ISSUERS: {problem}")
            continue
        if issuer in entries and entries[issuer] != jwks:
            problems.append(f"MCPAUTH_ISSUERS names issuer {issuer!r} twice with two JWKS URLs")
            continue
        entries[issuer] = jwks
    return tuple(entries.items()), tuple(problems)


def url_problem(url: str, what: str) -> str | None:
    """Why ``url`` is not an absolute http(s) URL without query or fragment, or ``None``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{what} {url!r} is not an absolute http(s) URL"
    if what == "issuer" and (parts.query or parts.fragment):
        return f"{what} {url!r} has a query or fragment"
    return None


@dataclass(frozen=True)
class MCPAuthSettings:
    debug: bool
    #: Public base URL of this server (``MCPAUTH_BASE_URL``); the MCP resource is
    #: ``base_url + path``.
    base_url: str
    preset: Preset
    #: Accepted ``iss`` values, every issuer's (see :attr:`issuer_configs`).
    issuers: tuple[str, ...]
    #: Accepted ``aud`` values; a token must carry at least one of them.
    audiences: tuple[str, ...]
    #: ``MCPAUTH_JWKS_URL`` (or Scalekit's ``{env}/keys``): the single issuer's JWKS URL; each
    #: issuer's own is in :attr:`issuer_configs` (empty there: discovered).
    jwks_url: str
    #: Advertised in the protected-resource metadata (RFC 9728).
    authorization_servers: tuple[str, ...]
    #: The issuers, each with its own keys and tenants (first: the default for commands).
    issuer_configs: tuple[IssuerConfig, ...] = ()
    #: Problems with ``MCPAUTH_ISSUERS`` (entries left out), reported by ``mcpauth.E011``.
    issuer_problems: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    #: Accepted JOSE ``typ`` header values (case-insensitive). A missing ``typ`` is refused
    #: unless ``require_typ`` is off.
    accepted_types: tuple[str, ...] = ("jwt", "at+jwt", "application/at+jwt")
    require_typ: bool = True
    leeway_seconds: int = 30
    max_token_bytes: int = 8192
    jwks_cache_ttl: int = 3600
    #: At most one JWKS refetch per this many seconds for an unknown ``kid``; also the longest
    #: wait between attempts while the JWKS fails (retries back off from one second).
    jwks_refetch_interval: int = 60
    #: While an issuer's keys never loaded: the longest wait between fetch attempts (capped by
    #: ``jwks_refetch_interval``), so service resumes within this long of the JWKS answering.
    jwks_retry_max: float = 8.0
    jwks_timeout: float = 3.0
    tenant_claim: str = "oid"
    auto_provision_tenants: bool = True
    #: Seconds a worker caches tenants, client bindings/policies and the scope map (the bound on
    #: how long a change takes to reach other workers without a shared cache).
    cache_ttl: int = 30
    #: With a shared cache: how often a worker looks for configuration changes made elsewhere.
    revocation_check_interval: float = 0.5
    #: The server's name: RFC 9728 ``resource_name`` and the MCP ``serverInfo.name``.
    resource_name: str = "Governed MCP server"
    #: The MCP server's ``instructions`` for clients.
    instructions: str = "Every call is authorised per tool and audited."
    #: Scopes named in a bare 401 challenge (``scope=``); empty means every concrete scope of
    #: the scope map, so a client that follows the challenge can see every tool it may get.
    base_scopes: tuple[str, ...] = ()
    rate_limit: str = "120/m"
    #: Optional ``{scope: rate}`` tiers; the most generous tier the token holds wins.
    scope_rate_limits: dict[str, str] = field(default_factory=dict)
    #: The cache alias rate limits count in: django-ratelimit's ``RATELIMIT_USE_CACHE``
    #: (default ``"default"``); ``mcpauth.E014`` when ``CACHES`` has no such alias.
    rate_limit_cache: str = "default"
    rate_limit_fail_open: bool = False
    #: Most calls a worker counts in Redis at once (``mcpauth.admission.leases``); 1: every call.
    rate_limit_lease: int = 32
    unauthenticated_rate_limit: str = "30/m"
    trusted_proxies: int = 0
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    #: With a loopback ``BASE_URL``: allow browser origins on any loopback port (local tools).
    loopback_origins_any_port: bool = False
    max_body_bytes: int = 1_048_576
    #: Seconds from a request's headers to its body's last byte (a slow client gets 408).
    body_timeout: float = 30.0
    max_json_depth: int = 32
    #: Answer single handshake-era JSON-RPC requests without the MCP SDK's per-request stateless
    #: transport (same handler kernel and serializer, see ``mcpauth.runtime.transport``); off sends
    #: every request through the SDK's session manager.
    fast_transport: bool = True
    #: The development issuer's RSA key (created on first use; relative: to the working
    #: directory).
    dev_key_path: Path = Path("var/dev-issuer-key.pem")
    #: Where the MCP endpoint is served (``MCPAUTH_PATH``), e.g. ``/mcp``.
    path: str = DEFAULT_PATH
    #: PostgreSQL: confine governed bodies with row-level security (``mcpauth.rls``).
    row_level_security: bool = True
    #: PostgreSQL: the restricted role governed bodies run as (created by ``migrate``).
    tenant_db_role: str = "mcpauth_tenant"
    #: Secrets the multi-round-trip ``requestState`` is sealed with
    #: (``MCPAUTH_REQUEST_STATE_KEYS``, each at least 32 bytes): the first seals, every one
    #: opens (rotation). Every worker must have the same list.
    request_state_keys: tuple[str, ...] = ()
    #: No key is configured: ``request_state_keys`` holds one derived from ``SECRET_KEY``
    #: (``mcpauth.W060`` outside ``DEBUG`` and the tests).
    request_state_keys_derived: bool = False
    #: Seconds a sealed ``requestState`` stays valid (``MCPAUTH_REQUEST_STATE_TTL``).
    request_state_ttl: float = 600.0

    @cached_property
    def allowed_origin_keys(self) -> frozenset[OriginKey]:
        """``(scheme, host, port)`` of ``BASE_URL`` and of every allowed origin."""
        keys = (origin_key(o) for o in (self.base_url, *self.allowed_origins))
        return frozenset(k for k in keys if k is not None)

    @cached_property
    def _issuer_index(self) -> dict[str, IssuerConfig]:
        return {iss: cfg for cfg in self.issuer_configs for iss in cfg.accepted}

    def issuer_for(self, iss: str) -> IssuerConfig | None:
        """The configured issuer that accepts the ``iss`` value ``iss``, or ``None``."""
        return self._issuer_index.get(iss)

    @property
    def default_issuer(self) -> str:
        """The first configured issuer (``""`` when none): what a tenant, binding or policy
        created without naming an issuer belongs to."""
        return self.issuer_configs[0].issuer if self.issuer_configs else ""

    @property
    def resource_url(self) -> str:
        return f"{self.base_url}{self.path}"

    @property
    def resource_metadata_path(self) -> str:
        """RFC 9728 §3.1: the well-known prefix, then the resource's path."""
        return f"/.well-known/oauth-protected-resource{self.path}"

    @property
    def resource_metadata_url(self) -> str:
        return f"{self.base_url}{self.resource_metadata_path}"

    @property
    def dev_issuer(self) -> str:
        return f"{self.base_url}/dev-issuer"


def lease_problem(value: Any) -> str | None:
    """Why ``MCPAUTH_RATE_LIMIT_LEASE`` is unusable, or ``None``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"MCPAUTH_RATE_LIMIT_LEASE is {value!r}, not a whole number of calls (1 or more)."
    return None


def _lease(value: Any) -> int:
    """``MCPAUTH_RATE_LIMIT_LEASE``; an unusable value (``mcpauth.E017``) counts every call."""
    return 1 if lease_problem(value) else int(value)


def _build() -> MCPAuthSettings:
    s = dj_settings
    debug = bool(getattr(s, "DEBUG", False))
    base_url = str(setting("MCPAUTH_BASE_URL", "BASE_URL", default=DEFAULT_BASE_URL)).rstrip("/")
    path = normalize_path(setting("MCPAUTH_PATH", default=DEFAULT_PATH))
    resource = f"{base_url}{path}"
    extra_audiences = split_list(getattr(s, "MCPAUTH_AUDIENCE", ""))
    sk_env = str(getattr(s, "SCALEKIT_ENVIRONMENT_URL", "") or "").rstrip("/")
    sk_resource = str(getattr(s, "SCALEKIT_RESOURCE_ID", "") or "")
    issuer_setting = split_list(getattr(s, "MCPAUTH_ISSUER", ""))
    explicit, problems = parse_issuers(getattr(s, "MCPAUTH_ISSUERS", None))
    jwks_url = str(getattr(s, "MCPAUTH_JWKS_URL", "") or "")
    auth_servers = split_list(getattr(s, "MCPAUTH_AUTHORIZATION_SERVERS", ""))

    preset: Preset
    if sk_env and sk_resource:
        preset = "scalekit"
        issuers: tuple[str, ...] = (sk_env, f"{sk_env}/resources/{sk_resource}")
        audiences = tuple(dict.fromkeys((sk_resource, resource, *extra_audiences)))
        jwks_url = jwks_url or f"{sk_env}/keys"
        auth_servers = auth_servers or (f"{sk_env}/resources/{sk_resource}",)
        # one provider under two iss values: one key set, one tenant namespace
        configs: tuple[IssuerConfig, ...] = (IssuerConfig(sk_env, issuers, jwks_url),)
    elif issuer_setting or explicit:
        preset = "oidc"
        given = dict(explicit)
        names = tuple(dict.fromkeys((*issuer_setting, *given)))
        configs = tuple(
            IssuerConfig(
                name, (name,), given.get(name) or (jwks_url if n == 0 and len(names) == 1 else "")
            )
            for n, name in enumerate(names)
        )
        issuers = names
        audiences = extra_audiences or (resource,)
        auth_servers = auth_servers or (issuers[0],)
    elif debug:
        preset = "dev"
        issuers = (f"{base_url}/dev-issuer",)
        audiences = extra_audiences or (resource,)
        auth_servers = issuers
        configs = (IssuerConfig(issuers[0], issuers, dev=True),)
    else:
        preset = "none"
        issuers, audiences, configs = (), extra_audiences or (resource,), ()

    algorithms = tuple(
        a
        for a in split_list(getattr(s, "MCPAUTH_ALGORITHMS", "")) or DEFAULT_ALGORITHMS
        if a in SAFE_ALGORITHMS
    )
    hosts = tuple(getattr(s, "ALLOWED_HOSTS", ()) or ())
    state_keys = split_list(getattr(s, "MCPAUTH_REQUEST_STATE_KEYS", ()))
    return MCPAuthSettings(
        debug=debug,
        base_url=base_url,
        preset=preset,
        issuers=issuers,
        audiences=audiences,
        jwks_url=jwks_url,
        authorization_servers=auth_servers,
        issuer_configs=configs,
        issuer_problems=problems,
        algorithms=algorithms,
        require_typ=bool(getattr(s, "MCPAUTH_REQUIRE_TYP", True)),
        leeway_seconds=int(getattr(s, "MCPAUTH_LEEWAY_SECONDS", 30)),
        max_token_bytes=int(getattr(s, "MCPAUTH_MAX_TOKEN_BYTES", 8192)),
        jwks_cache_ttl=int(getattr(s, "MCPAUTH_JWKS_CACHE_TTL", 3600)),
        jwks_refetch_interval=int(getattr(s, "MCPAUTH_JWKS_REFETCH_INTERVAL", 60)),
        jwks_retry_max=float(getattr(s, "MCPAUTH_JWKS_RETRY_MAX", 8.0)),
        jwks_timeout=float(getattr(s, "MCPAUTH_JWKS_TIMEOUT", 3.0)),
        tenant_claim=str(getattr(s, "MCPAUTH_TENANT_CLAIM", "oid") or "oid"),
        auto_provision_tenants=bool(getattr(s, "MCPAUTH_AUTO_PROVISION_TENANTS", True)),
        cache_ttl=int(getattr(s, "MCPAUTH_CACHE_TTL", 30)),
        revocation_check_interval=float(getattr(s, "MCPAUTH_REVOCATION_CHECK_INTERVAL", 0.5)),
        resource_name=str(getattr(s, "MCPAUTH_RESOURCE_NAME", "Governed MCP server")),
        instructions=str(
            getattr(s, "MCPAUTH_INSTRUCTIONS", "Every call is authorised per tool and audited.")
        ),
        base_scopes=split_list(getattr(s, "MCPAUTH_BASE_SCOPES", "")),
        rate_limit=str(getattr(s, "MCPAUTH_RATE_LIMIT", "120/m")),
        scope_rate_limits=dict(getattr(s, "MCPAUTH_SCOPE_RATE_LIMITS", {}) or {}),
        # django-ratelimit's own setting, which its counting (get_usage) reads too
        rate_limit_cache=str(getattr(s, "RATELIMIT_USE_CACHE", "default") or "default"),
        rate_limit_fail_open=bool(getattr(s, "MCPAUTH_RATE_LIMIT_FAIL_OPEN", False)),
        rate_limit_lease=_lease(getattr(s, "MCPAUTH_RATE_LIMIT_LEASE", 32)),
        unauthenticated_rate_limit=str(getattr(s, "MCPAUTH_UNAUTHENTICATED_RATE_LIMIT", "30/m")),
        trusted_proxies=int(getattr(s, "MCPAUTH_TRUSTED_PROXIES", 0)),
        allowed_hosts=hosts,
        allowed_origins=split_list(getattr(s, "MCPAUTH_ALLOWED_ORIGINS", ())),
        loopback_origins_any_port=bool(getattr(s, "MCPAUTH_LOOPBACK_ORIGINS_ANY_PORT", False)),
        max_body_bytes=int(getattr(s, "MCPAUTH_MAX_BODY_BYTES", 1_048_576)),
        body_timeout=float(getattr(s, "MCPAUTH_BODY_TIMEOUT", 30.0)),
        max_json_depth=int(getattr(s, "MCPAUTH_MAX_JSON_DEPTH", 32)),
        fast_transport=bool(getattr(s, "MCPAUTH_FAST_TRANSPORT", True)),
        dev_key_path=Path(getattr(s, "MCPAUTH_DEV_KEY_PATH", "var/dev-issuer-key.pem")),
        path=path,
        row_level_security=bool(getattr(s, "MCPAUTH_ROW_LEVEL_SECURITY", True)),
        tenant_db_role=str(getattr(s, "MCPAUTH_TENANT_DB_ROLE", "mcpauth_tenant")),
        request_state_keys=state_keys or (derived_state_key(str(getattr(s, "SECRET_KEY", ""))),),
        request_state_keys_derived=not state_keys,
        request_state_ttl=float(getattr(s, "MCPAUTH_REQUEST_STATE_TTL", 600.0)),
    )


def derived_state_key(secret_key: str) -> str:
    """The ``requestState`` key when none is configured: an HMAC of ``SECRET_KEY`` under a
    label of its own, so the state key never equals a key used for anything else."""
    return hmac.new(secret_key.encode(), b"mcpauth/request-state/v1", hashlib.sha256).hexdigest()


@lru_cache(maxsize=1)
def get_settings() -> MCPAuthSettings:
    return _build()


_WATCHED_PREFIXES = ("MCPAUTH_", "SCALEKIT_")
_WATCHED = {"DEBUG", "BASE_URL", "ALLOWED_HOSTS", "RATELIMIT_USE_CACHE", "SECRET_KEY"}


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting in _WATCHED or setting.startswith(_WATCHED_PREFIXES):
        get_settings.cache_clear()
