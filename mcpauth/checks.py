"""System checks for mcpauth (``python manage.py check``); errors also stop ASGI startup.

* ``mcpauth.E001`` no identity provider configured while ``DEBUG`` is off;
* ``mcpauth.E002`` ``MCPAUTH_BASE_URL`` is not an absolute http(s) URL;
* ``mcpauth.E003`` no usable algorithm (HMAC/``none`` are never allowed);
* ``mcpauth.E004`` a rate setting does not parse;
* ``mcpauth.E005`` Scalekit preset half-configured;
* ``mcpauth.E006`` two tools (or two prompts) share one name, or two resources one URI;
* ``mcpauth.E007`` a tool's, resource's or prompt's permission is not ``app_label.codename``;
* ``mcpauth.E008`` a tool is declared both ``read_only`` and ``destructive``;
* ``mcpauth.E009`` a tool's or prompt's name is not an MCP tool name: 1 to ``MAX_TOOL_NAME``
  (100) characters of ``A-Z a-z 0-9 _ - .`` (:func:`mcpauth.runtime.registry.is_tool_name`);
* ``mcpauth.E030`` FastMCP refuses a resource or prompt declaration (a template whose
  parameters do not match the function's, positional-only arguments ...);
* ``mcpauth.E031`` an app's ``mcp.py`` builds a FastMCP server of its own (nothing on it would
  be served);
* ``mcpauth.E010`` ``MCPAUTH_JWKS_URL`` is set while several issuers are configured (one JWKS
  for several issuers would let one issuer's key vouch for another);
* ``mcpauth.E011`` an ``MCPAUTH_ISSUERS`` entry is malformed (not an http(s) issuer or JWKS URL,
  or one issuer given two JWKS URLs);
* ``mcpauth.W010`` the rate-limit cache is not shared between workers while ``DEBUG`` is off;
* ``mcpauth.W011`` ``ALLOWED_HOSTS`` contains ``*``, which disables DNS-rebinding protection;
* ``mcpauth.W012`` the development issuer is active;
* ``mcpauth.E013`` ``MCPAUTH_BODY_TIMEOUT`` is not a positive number of seconds;
* ``mcpauth.E014`` the rate-limit cache (``RATELIMIT_USE_CACHE``, default ``"default"``) is not
  an alias in ``CACHES``;
* ``mcpauth.E016`` ``MCPAUTH_PATH`` is not a path such as ``/mcp``;
* ``mcpauth.E017`` ``MCPAUTH_RATE_LIMIT_LEASE`` is not a whole number of calls, 1 or more;
* with ``check --deploy``: ``mcpauth.W015`` ``MCPAUTH_BASE_URL`` is not https,
  ``mcpauth.W016`` ``MCPAUTH_BASE_URL`` is not set (the development default is used), and
  ``mcpauth.W024`` metrics are per process (:mod:`mcpauth.observability.checks`);
* ``mcpauth.W040`` (database check) a ``TenantOwned`` table lacks its row-level security or a
  composite tenant key (``manage.py check --database default``; a warning, so that ``migrate``,
  which installs them, is not stopped by it; ``/health/ready`` answers 503 meanwhile);
* ``mcpauth.E041`` ``MCPAUTH_TENANT_DB_ROLE`` is not a plain role name;
* ``mcpauth.W042`` row-level security is turned off on PostgreSQL;
* ``mcpauth.E060`` an ``MCPAUTH_REQUEST_STATE_KEYS`` entry is shorter than 32 bytes or repeated,
  or ``MCPAUTH_REQUEST_STATE_TTL`` is not a positive number of seconds;
* ``mcpauth.W060`` no ``MCPAUTH_REQUEST_STATE_KEYS`` while ``DEBUG`` is off: the key sealing
  the multi-round-trip ``requestState`` is derived from ``SECRET_KEY``.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from mcpauth import rls
from mcpauth.conf import MCPAuthSettings, get_settings, lease_problem, parse_rate
from mcpauth.runtime.components import fastmcp_prompt, fastmcp_resource
from mcpauth.runtime.registry import MAX_TOOL_NAME, ToolRegistry, is_tool_name, registry

_ROLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SHARED_CACHES = ("redis", "memcached", "db.DatabaseCache")
_PATH_RE = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def _request_state_checks(conf: MCPAuthSettings) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    keys = conf.request_state_keys
    short = [i for i, key in enumerate(keys) if len(key.encode()) < 32]
    if short or len(set(keys)) != len(keys) or not conf.request_state_ttl > 0:
        what = (
            f"entry {short[0] + 1} is shorter than 32 bytes"
            if short
            else "an entry is repeated"
            if len(set(keys)) != len(keys)
            else f"MCPAUTH_REQUEST_STATE_TTL is {conf.request_state_ttl!r}"
        )
        messages.append(
            checks.Error(
                f"MCPAUTH_REQUEST_STATE_KEYS cannot seal requestState: {what}.",
                hint='Each key: at least 32 random bytes, e.g. `python -c "import secrets; '
                'print(secrets.token_hex(32))"`; list the new key first to rotate, keep the old '
                "one after it for one MCPAUTH_REQUEST_STATE_TTL. The TTL is in seconds (600).",
                id="mcpauth.E060",
            )
        )
    if (
        conf.request_state_keys_derived
        and not conf.debug
        and not getattr(settings, "TESTING", False)
    ):
        messages.append(
            checks.Warning(
                "MCPAUTH_REQUEST_STATE_KEYS is not set: the key that seals the multi-round-trip "
                "requestState is derived from SECRET_KEY.",
                hint="Set MCPAUTH_REQUEST_STATE_KEYS to a secret of its own (the same list on "
                "every worker), so that rotating SECRET_KEY does not void states in flight and "
                "the state key can be rotated on its own.",
                id="mcpauth.W060",
            )
        )
    return messages


@checks.register("mcpauth")
def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    conf = get_settings()
    messages: list[checks.CheckMessage] = []
    if conf.preset == "none":
        messages.append(
            checks.Error(
                "No identity provider is configured and DEBUG is off.",
                hint="Set SCALEKIT_ENVIRONMENT_URL and SCALEKIT_RESOURCE_ID, or MCPAUTH_ISSUER / "
                "MCPAUTH_ISSUERS (and MCPAUTH_AUDIENCE / MCPAUTH_JWKS_URL as needed). The "
                "development issuer only runs with DEBUG=1.",
                id="mcpauth.E001",
            )
        )
    messages.extend(issuer_messages())
    if not conf.base_url.startswith(("http://", "https://")):
        messages.append(
            checks.Error(
                f"MCPAUTH_BASE_URL {conf.base_url!r} is not an absolute http(s) URL.",
                hint="The server's public URL, e.g. MCPAUTH_BASE_URL = 'https://mcp.example.com'.",
                id="mcpauth.E002",
            )
        )
    if not conf.algorithms:
        messages.append(
            checks.Error(
                "MCPAUTH_ALGORITHMS leaves no usable algorithm.",
                hint="Use asymmetric algorithms such as RS256 or ES256; HS* and none are refused.",
                id="mcpauth.E003",
            )
        )
    rates = {
        "MCPAUTH_RATE_LIMIT": conf.rate_limit,
        "MCPAUTH_UNAUTHENTICATED_RATE_LIMIT": conf.unauthenticated_rate_limit,
    }
    for scope, rate in conf.scope_rate_limits.items():
        rates[f"MCPAUTH_SCOPE_RATE_LIMITS[{scope!r}]"] = rate
    for name, rate in rates.items():
        try:
            parse_rate(rate)
        except ValueError as exc:
            messages.append(checks.Error(f"{name}: {exc}", hint="e.g. 120/m", id="mcpauth.E004"))
    if bool(getattr(settings, "SCALEKIT_ENVIRONMENT_URL", "")) != bool(
        getattr(settings, "SCALEKIT_RESOURCE_ID", "")
    ):
        messages.append(
            checks.Error(
                "Only one of SCALEKIT_ENVIRONMENT_URL and SCALEKIT_RESOURCE_ID is set.",
                hint="Set both to use the Scalekit preset.",
                id="mcpauth.E005",
            )
        )
    caches = getattr(settings, "CACHES", {}) or {}
    if conf.rate_limit_cache not in caches:
        messages.append(
            checks.Error(
                f"The rate-limit cache {conf.rate_limit_cache!r} (RATELIMIT_USE_CACHE) is not "
                "in CACHES: every call would fail closed with 503.",
                hint=f"Add a {conf.rate_limit_cache!r} alias to CACHES, or point "
                "RATELIMIT_USE_CACHE at an existing one (unset, rate limits count in "
                "'default').",
                id="mcpauth.E014",
            )
        )
    backend = str(caches.get(conf.rate_limit_cache, {}).get("BACKEND", ""))
    if (
        conf.rate_limit_cache in caches
        and not conf.debug
        and not any(s.lower() in backend.lower() for s in _SHARED_CACHES)
    ):
        messages.append(
            checks.Warning(
                f"The rate-limit cache {conf.rate_limit_cache!r} ({backend}) is not shared "
                "between worker processes: each worker counts its own calls.",
                hint="Use a shared cache for it (Redis: mcpauth.admission.cache.RedisCache), "
                "through CACHES and RATELIMIT_USE_CACHE; the reference project does so when "
                "REDIS_URL is set.",
                id="mcpauth.W010",
            )
        )
    lease = lease_problem(getattr(settings, "MCPAUTH_RATE_LIMIT_LEASE", 32))
    if lease:
        messages.append(
            checks.Error(
                lease,
                hint="The most calls a worker counts in Redis at once, e.g. 32; 1 counts every "
                "call on its own. Until fixed, every call is counted on its own.",
                id="mcpauth.E017",
            )
        )
    if not _PATH_RE.fullmatch(conf.path):
        messages.append(
            checks.Error(
                f"MCPAUTH_PATH {conf.path!r} is not a path for the MCP endpoint.",
                hint="A path below the root (letters, digits, '-', '_', '.', '/'), e.g. '/mcp'.",
                id="mcpauth.E016",
            )
        )
    if "*" in conf.allowed_hosts:
        messages.append(
            checks.Warning(
                "ALLOWED_HOSTS contains '*': DNS-rebinding protection on /mcp is weakened.",
                hint="List the host names this server is reached by.",
                id="mcpauth.W011",
            )
        )
    if not conf.body_timeout > 0:
        messages.append(
            checks.Error(
                f"MCPAUTH_BODY_TIMEOUT is {conf.body_timeout!r}: every request body times out.",
                hint="Seconds a request body may take to arrive, e.g. 30.",
                id="mcpauth.E013",
            )
        )
    messages.extend(_request_state_checks(conf))
    if conf.preset == "dev":
        messages.append(
            checks.Warning(
                "The development issuer is active: tokens minted locally are accepted.",
                hint="Configure a real issuer for anything but local development.",
                id="mcpauth.W012",
            )
        )
    if not _ROLE_RE.fullmatch(conf.tenant_db_role):
        messages.append(
            checks.Error(
                f"MCPAUTH_TENANT_DB_ROLE {conf.tenant_db_role[:70]!r} is not a plain role name.",
                hint="Use lowercase letters, digits and underscores, e.g. 'mcpauth_tenant'.",
                id="mcpauth.E041",
            )
        )
    uses_postgres = any(connections[alias].vendor == "postgresql" for alias in settings.DATABASES)
    if uses_postgres and not conf.row_level_security:
        messages.append(
            checks.Warning(
                "MCPAUTH_ROW_LEVEL_SECURITY is off: tenant isolation rests on the ORM alone.",
                hint="Remove MCPAUTH_ROW_LEVEL_SECURITY=False and run migrate.",
                id="mcpauth.W042",
            )
        )
    return messages


@checks.register("mcpauth", deploy=True)
def check_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """What production needs beyond a working configuration (``manage.py check --deploy``)."""
    conf = get_settings()
    messages: list[checks.CheckMessage] = []
    explicit = getattr(settings, "MCPAUTH_BASE_URL", None) or getattr(settings, "BASE_URL", None)
    if not explicit:
        messages.append(
            checks.Warning(
                f"MCPAUTH_BASE_URL is not set: the resource is {conf.resource_url}, which is "
                "what tokens must name as their audience and what clients are told.",
                hint="Set MCPAUTH_BASE_URL to the server's public URL.",
                id="mcpauth.W016",
            )
        )
    elif conf.base_url.startswith("http://"):
        messages.append(
            checks.Warning(
                f"MCPAUTH_BASE_URL {conf.base_url!r} is not https: bearer tokens would cross "
                "the network in clear text.",
                hint="Serve /mcp over TLS (a reverse proxy is fine) and give its https URL.",
                id="mcpauth.W015",
            )
        )
    return messages


def issuer_messages() -> list[checks.CheckMessage]:
    """Problems with the issuers' configuration (``E010``, ``E011``)."""
    conf = get_settings()
    messages: list[checks.CheckMessage] = []
    if conf.preset == "oidc" and conf.jwks_url and len(conf.issuer_configs) > 1:
        messages.append(
            checks.Error(
                f"MCPAUTH_JWKS_URL names one JWKS for {len(conf.issuer_configs)} issuers: a key "
                "is only accepted for the issuer whose JWKS served it.",
                hint="Give each issuer its own JWKS URL in MCPAUTH_ISSUERS "
                "('https://a.example/=https://a.example/jwks.json https://b.example/=...'), or "
                "leave it out to discover it from the issuer's metadata.",
                id="mcpauth.E010",
            )
        )
    for problem in conf.issuer_problems:
        messages.append(
            checks.Error(
                problem + ".",
                hint="MCPAUTH_ISSUERS holds 'ISSUER' or 'ISSUER=JWKS_URL' items separated by "
                "spaces or commas (in settings: a mapping {issuer: jwks_url or ''}); both are "
                "absolute http(s) URLs, the issuer without query or fragment.",
                id="mcpauth.E011",
            )
        )
    return messages


@checks.register("mcpauth", checks.Tags.database)
def check_row_level_security(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W040: every ``TenantOwned`` table is guarded by the database (run with ``--database``)."""
    messages: list[checks.CheckMessage] = []
    for alias in databases or ():
        for problem in rls.problems(alias):
            messages.append(
                checks.Warning(
                    f"Database {alias!r}: {problem}.",
                    hint="Run 'manage.py migrate' (it installs the policies and keys). For rows "
                    "that reference another tenant's rows, fix or delete them, then migrate.",
                    id="mcpauth.W040",
                )
            )
    return messages


def _bad_permission(perm: str) -> bool:
    app_label, _, codename = perm.partition(".")
    return not app_label or not codename or "." in codename or " " in perm


def tool_messages(tools: ToolRegistry) -> list[checks.CheckMessage]:
    """Problems with the registered tools, resources and prompts (``E006``-``E009``,
    ``E030``, ``E031``)."""
    messages: list[checks.CheckMessage] = []
    named: list[tuple[Any, Any]] = [*tools.duplicates, *tools.prompts.duplicates]
    for first, second in named:
        messages.append(
            checks.Error(
                f"Two MCP {first.kind}s are named {first.name!r}: "
                f"{first.module}.{first.fn.__name__} and {second.module}.{second.fn.__name__}.",
                hint=f"Give one of them another name: @{first.kind}(name=...).",
                id="mcpauth.E006",
            )
        )
    for first_r, second_r in tools.resources.duplicates:
        messages.append(
            checks.Error(
                f"Two MCP resources have the URI {first_r.uri!r}: "
                f"{first_r.module}.{first_r.fn.__name__} and "
                f"{second_r.module}.{second_r.fn.__name__}.",
                hint="Give one of them another URI.",
                id="mcpauth.E006",
            )
        )
    specs: list[Any] = [*tools, *tools.resources, *tools.prompts]
    for spec in specs:
        for perm in spec.permissions:
            if _bad_permission(perm):
                messages.append(
                    checks.Error(
                        f"MCP {spec.kind} {spec.key!r} ({spec.module}) requires {perm!r}, which "
                        "is not a permission name.",
                        hint="Use Django permission names: 'app_label.codename', e.g. "
                        "'notes.view_note'.",
                        id="mcpauth.E007",
                    )
                )
    for spec in tools:
        if spec.read_only and spec.destructive:
            messages.append(
                checks.Error(
                    f"MCP tool {spec.name!r} ({spec.module}) is declared read_only and "
                    "destructive.",
                    hint="A read-only tool changes nothing: drop one of the two.",
                    id="mcpauth.E008",
                )
            )
    for spec in [*tools, *tools.prompts]:
        if not is_tool_name(spec.name):
            messages.append(
                checks.Error(
                    f"MCP {spec.kind} {spec.name[:40]!r}{'...' if len(spec.name) > 40 else ''} "
                    f"({spec.module}) has a name of {len(spec.name)} characters that is not an "
                    f"MCP tool name: 1 to {MAX_TOOL_NAME} characters of A-Z a-z 0-9 _ - . only.",
                    hint=f"Rename it: @{spec.kind}(name=...). Requests naming anything else are "
                    "refused.",
                    id="mcpauth.E009",
                )
            )
    messages.extend(_refused_by_fastmcp(tools))
    for module, attr in tools.foreign_servers:
        messages.append(
            checks.Error(
                f"{module} builds a FastMCP server of its own ({attr!r}): nothing registered on "
                "it is served, and nothing on it would be governed.",
                hint="Declare tools, resources and prompts with `from mcpauth import tool, "
                "resource, prompt` (@tool(permissions=[...]), @resource('scheme://{id}', "
                "permissions=[...]), @prompt(permissions=[...])) and drop the FastMCP instance.",
                id="mcpauth.E031",
            )
        )
    return messages


def _refused_by_fastmcp(tools: ToolRegistry) -> list[checks.CheckMessage]:
    """``E030``: the resources and prompts FastMCP would refuse to build (at startup)."""
    messages: list[checks.CheckMessage] = []
    builders: list[tuple[Any, Any]] = [
        *((spec, fastmcp_resource) for spec in tools.resources),
        *((spec, fastmcp_prompt) for spec in tools.prompts),
    ]
    for spec, build in builders:
        try:
            build(spec)
        except (TypeError, ValueError) as exc:
            messages.append(
                checks.Error(
                    f"FastMCP refuses MCP {spec.kind} {spec.key!r} "
                    f"({spec.module}.{spec.fn.__name__}): {exc}",
                    hint="Make the function's arguments match what FastMCP accepts: a template's "
                    "{parameters} are its required arguments, query parameters {?name} "
                    "optional ones; prompts take named arguments only.",
                    id="mcpauth.E030",
                )
            )
    return messages


@checks.register("mcpauth")
def check_tools(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return tool_messages(registry)


def assert_startup_ready() -> None:
    """Raise ImproperlyConfigured when a ``mcpauth`` check reports an error."""
    from mcpauth.downstream.checks import check_downstreams

    checks_run = [*check_configuration(), *check_tools(), *check_downstreams()]
    errors = [m for m in checks_run if m.is_serious()]
    if errors:
        lines = [f"{m.id}: {m.msg} HINT: {m.hint}" for m in errors]
        raise ImproperlyConfigured("mcpauth is misconfigured:\n  " + "\n  ".join(lines))
