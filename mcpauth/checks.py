"""System checks for mcpauth (``python manage.py check``); errors also stop ASGI startup.

* ``mcpauth.E001`` no identity provider configured while ``DEBUG`` is off;
* ``mcpauth.E002`` ``BASE_URL`` is not an absolute http(s) URL;
* ``mcpauth.E003`` no usable algorithm (HMAC/``none`` are never allowed);
* ``mcpauth.E004`` a rate setting does not parse;
* ``mcpauth.E005`` Scalekit preset half-configured;
* ``mcpauth.E006`` two tools share one name;
* ``mcpauth.E007`` a tool's permission is not of the form ``app_label.codename``;
* ``mcpauth.E008`` a tool is declared both ``read_only`` and ``destructive``;
* ``mcpauth.E009`` a tool's name is longer than ``MAX_TOOL_NAME`` (100) characters;
* ``mcpauth.W010`` the rate-limit cache is not shared between workers while ``DEBUG`` is off;
* ``mcpauth.W011`` ``ALLOWED_HOSTS`` contains ``*``, which disables DNS-rebinding protection;
* ``mcpauth.W012`` the development issuer is active;
* ``mcpauth.E040`` (database check) a ``TenantOwned`` table lacks its row-level security or a
  composite tenant key (``manage.py check --database default``);
* ``mcpauth.E041`` ``MCPAUTH_TENANT_DB_ROLE`` is not a plain role name;
* ``mcpauth.W042`` row-level security is turned off on PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from mcpauth import rls
from mcpauth.conf import get_settings, parse_rate
from mcpauth.registry import MAX_TOOL_NAME, ToolRegistry, registry

_ROLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SHARED_CACHES = ("redis", "memcached", "db.DatabaseCache")


@checks.register("mcpauth")
def check_configuration(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    conf = get_settings()
    messages: list[checks.CheckMessage] = []
    if conf.preset == "none":
        messages.append(
            checks.Error(
                "No identity provider is configured and DEBUG is off.",
                hint="Set SCALEKIT_ENVIRONMENT_URL and SCALEKIT_RESOURCE_ID, or MCPAUTH_ISSUER "
                "(and MCPAUTH_AUDIENCE / MCPAUTH_JWKS_URL as needed). The development issuer "
                "only runs with DEBUG=1.",
                id="mcpauth.E001",
            )
        )
    if not conf.base_url.startswith(("http://", "https://")):
        messages.append(
            checks.Error(
                f"BASE_URL {conf.base_url!r} is not an absolute http(s) URL.",
                hint="e.g. BASE_URL=https://mcp.example.com",
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
    backend = str(settings.CACHES.get(conf.rate_limit_cache, {}).get("BACKEND", ""))
    if not conf.debug and not any(s.lower() in backend.lower() for s in _SHARED_CACHES):
        messages.append(
            checks.Warning(
                f"The rate-limit cache {conf.rate_limit_cache!r} ({backend}) is not shared "
                "between worker processes: each worker counts its own calls.",
                hint="Set REDIS_URL.",
                id="mcpauth.W010",
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


@checks.register("mcpauth", checks.Tags.database)
def check_row_level_security(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """E040: every ``TenantOwned`` table is guarded by the database (run with ``--database``)."""
    messages: list[checks.CheckMessage] = []
    for alias in databases or ():
        for problem in rls.problems(alias):
            messages.append(
                checks.Error(
                    f"Database {alias!r}: {problem}.",
                    hint="Run 'manage.py migrate' (it installs the policies and keys). For rows "
                    "that reference another tenant's rows, fix or delete them, then migrate.",
                    id="mcpauth.E040",
                )
            )
    return messages


def tool_messages(tools: ToolRegistry) -> list[checks.CheckMessage]:
    """Problems with the registered tools (``E006``-``E009``)."""
    messages: list[checks.CheckMessage] = []
    for first, second in tools.duplicates:
        messages.append(
            checks.Error(
                f"Two MCP tools are named {first.name!r}: {first.module}.{first.fn.__name__} "
                f"and {second.module}.{second.fn.__name__}.",
                hint="Give one of them another name: @tool(name=...).",
                id="mcpauth.E006",
            )
        )
    for spec in tools:
        for perm in spec.permissions:
            app_label, _, codename = perm.partition(".")
            if not app_label or not codename or "." in codename or " " in perm:
                messages.append(
                    checks.Error(
                        f"MCP tool {spec.name!r} ({spec.module}) requires {perm!r}, which is not "
                        "a permission name.",
                        hint="Use Django permission names: 'app_label.codename', e.g. "
                        "'notes.view_note'.",
                        id="mcpauth.E007",
                    )
                )
        if spec.read_only and spec.destructive:
            messages.append(
                checks.Error(
                    f"MCP tool {spec.name!r} ({spec.module}) is declared read_only and "
                    "destructive.",
                    hint="A read-only tool changes nothing: drop one of the two.",
                    id="mcpauth.E008",
                )
            )
        if len(spec.name) > MAX_TOOL_NAME:
            messages.append(
                checks.Error(
                    f"MCP tool {spec.name[:40]!r}... ({spec.module}) has a name of "
                    f"{len(spec.name)} characters; at most {MAX_TOOL_NAME} are allowed.",
                    hint="Give it a shorter name: @tool(name=...).",
                    id="mcpauth.E009",
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
