"""The trail audits itself: configuration and data changes, exports, through ``record()``.

One row per configuration change, ``method`` = ``config/<object>.<action>``
(``config/tenant.suspend``, ``config/scope_mapping.update``, ``config/client_binding.delete``…)
or ``audit/export`` / ``audit/prune``, ``outcome`` ``ok``, ``actor`` the staff username (admin)
or ``cli:<user>`` (management commands), and what changed in ``arguments`` (``{"target": …,
"changes": {field: [old, new]}}``). The admin writes these rows inside the transaction of the
change itself, so a change and its audit row commit or roll back together; so do the commands.

Changes to an app's data in the admin (:class:`audit.admin_mixins.AuditedModelAdmin`) are
``data/<app_label>.<model_name>.<action>`` rows (:func:`record_data_change`): ``create``,
``update``, ``delete``, or the name of the custom admin action that made the change. They hold
the object's id and the NAMES of the changed fields, never their values (domain data can be as
sensitive as tool arguments), plus tenant ids where the admin knows them.

Admin rows carry the HTTP request's client IP and user agent and ``status`` 200; command rows
``status`` 0 (no HTTP response).
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import models
from django.http import HttpRequest

from audit.models import Outcome
from audit.recorder import record

#: ``ScopeMapping`` → ``scope_mapping``: the ``<object>`` part of the method.
_OBJECT_NAMES = {
    "tenant": "tenant",
    "scopemapping": "scope_mapping",
    "clientbinding": "client_binding",
    "clientpolicy": "client_policy",
    "tenantalias": "tenant_alias",
    "downstreamsecret": "downstream_secret",
}


def object_name(model: type[models.Model] | models.Model) -> str:
    name = model._meta.model_name or type(model).__name__.lower()
    return _OBJECT_NAMES.get(name, name)


def cli_actor() -> str:
    """``cli:<operating-system user>`` for a management command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        user = "unknown"
    return f"cli:{user}"


def request_actor(request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    return str(user.get_username()) if user is not None else ""


def _client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def snapshot(obj: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    """``{field: value}`` of ``obj``'s plain (JSON-friendly) field values."""
    values: dict[str, Any] = {}
    for name in fields:
        value = getattr(obj, name)
        if isinstance(value, models.Model):
            value = str(value)
        values[name] = value
    return values


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for every field whose value changed."""
    return {
        name: [before.get(name), after.get(name)]
        for name in dict.fromkeys([*before, *after])
        if before.get(name) != after.get(name)
    }


def record_change(
    obj: type[models.Model] | models.Model | str,
    action: str,
    *,
    target: str,
    actor: str,
    changes: Mapping[str, Any] | None = None,
    request: HttpRequest | None = None,
    tenant: str = "",
    client_id: str = "",
    cascade: list[list[Any]] | None = None,
    issuer: str = "",
) -> int:
    """Audit one configuration change: ``method`` = ``config/<object>.<action>``; ``issuer`` is
    the issuer of the tenant, binding, policy or alias changed (its namespace).

    ``cascade``: for a delete, what else it deleted (``[[model label, count], ...]``), such as a
    tenant's data.
    """
    name = obj if isinstance(obj, str) else object_name(obj)
    arguments: dict[str, Any] = {"target": target}
    if changes:
        arguments["changes"] = dict(changes)
    if cascade:
        arguments["cascade"] = cascade
    return _record(
        f"config/{name}.{action}",
        actor=actor,
        arguments=arguments,
        request=request,
        tenant=tenant,
        client_id=client_id,
        issuer=issuer,
    )


def data_method(model: type[models.Model] | models.Model, action: str) -> str:
    """``data/todos.todo.update``: the ``method`` of a change to an app's data."""
    opts = model._meta
    return f"data/{opts.app_label}.{opts.model_name}.{action}"


def record_data_change(
    model: type[models.Model] | models.Model,
    action: str,
    *,
    actor: str,
    arguments: Mapping[str, Any],
    request: HttpRequest | None = None,
    tenant: str = "",
    client_id: str = "",
    request_id: str | None = None,
) -> int:
    """Audit one change to an app's data: ``method`` = ``data/<app_label>.<model>.<action>``.

    ``arguments`` names the object and the changed fields; callers never put field values in it.
    Rows about one change (a row moved between tenants: one row in each tenant's trail) share
    ``request_id``.
    """
    return _record(
        data_method(model, action),
        actor=actor,
        arguments=dict(arguments),
        request=request,
        tenant=tenant,
        client_id=client_id,
        request_id=request_id,
    )


def record_export(
    *,
    actor: str,
    fmt: str,
    filters: Iterable[tuple[str, Any]],
    rows: int | None = None,
    completed: bool | None = None,
    request: HttpRequest | None = None,
) -> int:
    """Audit one export: ``method`` ``audit/export``, with the format and the filter used.

    ``filters`` are ``(name, value)`` pairs, stored as a list of pairs rather than an object so
    that a filter such as ``token_id`` keeps its value (object keys that look sensitive are
    redacted by ``record()``).
    """
    arguments: dict[str, Any] = {"format": fmt, "filters": [[k, v] for k, v in filters]}
    if rows is not None:
        arguments["rows"] = rows
    if completed is not None:
        arguments["completed"] = completed
    return _record("audit/export", actor=actor, arguments=arguments, request=request)


def record_prune(*, actor: str, details: Mapping[str, Any]) -> int:
    """Audit one pruned block (written in its deletion's transaction): ``audit/prune``."""
    return _record("audit/prune", actor=actor, arguments=dict(details))


def _record(
    method: str,
    *,
    actor: str,
    arguments: dict[str, Any],
    request: HttpRequest | None = None,
    tenant: str = "",
    client_id: str = "",
    request_id: str | None = None,
    issuer: str = "",
) -> int:
    return record(
        outcome=Outcome.OK,
        status=200 if request is not None else 0,
        request_id=request_id or uuid.uuid4().hex,
        method=method,
        tenant=tenant,
        client_id=client_id,
        issuer=issuer,
        actor=actor,
        client_ip=_client_ip(request) if request is not None else None,
        user_agent=request.META.get("HTTP_USER_AGENT", "") if request is not None else "",
        arguments=arguments,
    )
