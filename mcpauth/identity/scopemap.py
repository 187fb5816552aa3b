"""The scope map as a service: grant, revoke, export and import (plan, then apply).

``manage.py scopes`` is a thin shell around these functions; the admin edits the same
:class:`~mcpauth.models.ScopeMapping` rows. Every rule is the model's own
(:func:`~mcpauth.models.scope_problem`, ``ScopeMapping.clean()``), and every change is audited
as configuration (``config/scope_mapping.<action>``) in the transaction that makes it. Problems
are :class:`ScopeMapError`, whose message is meant for the operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.changes import cli_actor, record_change
from mcpauth.identity.scopes import perm_name, resolve_permissions
from mcpauth.models import ScopeMapping, scope_problem

EXPORT_VERSION = 1
DESCRIPTION_MAX_LENGTH: int = getattr(
    ScopeMapping._meta.get_field("description"), "max_length", 255
)
PERM_HINT = "Permissions are written app_label.codename, e.g. todos.view_todo."


class ScopeMapError(ValueError):
    """A request the scope map refuses; the message says why, for the operator."""


# --- validation ----------------------------------------------------------------------------


def validate_scope(scope: str) -> str:
    """The model's own validation (``ScopeMapping.clean``)."""
    try:
        ScopeMapping(scope=scope).clean()
    except ValidationError as exc:
        raise ScopeMapError(f"Invalid scope: {'; '.join(exc.messages)}") from None
    return scope


def full_clean(mapping: ScopeMapping) -> None:
    """The model's validation (``clean()`` included) before a new mapping is saved."""
    try:
        mapping.full_clean(exclude=["permissions"])
    except ValidationError as exc:
        raise ScopeMapError(f"Invalid scope: {'; '.join(exc.messages)}") from None


def audit_scope(scope: str, action: str, changes: dict[str, Any], *, actor: str = "") -> None:
    """Audit a change to the scope map (``config/scope_mapping.<action>``; actor ``cli:…``
    unless given)."""
    record_change(ScopeMapping, action, target=scope, actor=actor or cli_actor(), changes=changes)


def resolve_all(names: list[str]) -> dict[str, Permission]:
    """``{name: Permission}`` for every name; one error listing all unknown ones."""
    found: dict[str, Permission] = {}
    problems: list[str] = []
    for name in dict.fromkeys(names):
        try:
            (found[name],) = resolve_permissions([name])
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ScopeMapError(f"Unknown permission(s): {'; '.join(problems)}. {PERM_HINT}")
    return found


def snapshot() -> dict[str, tuple[str, frozenset[str]]]:
    """``{scope: (description, permission names)}`` straight from the database."""
    mappings = ScopeMapping.objects.prefetch_related("permissions__content_type")
    rows = {
        m.scope: (m.description, frozenset(perm_name(p) for p in m.permissions.all()))
        for m in mappings
    }
    # Sorted here, not by the database, so the order does not depend on its collation.
    return dict(sorted(rows.items()))


# --- grant and revoke ----------------------------------------------------------------------


@dataclass
class Granted:
    created: bool
    description_updated: bool
    #: permissions added now, and those the scope granted already
    added: list[str]
    already: list[str]


def grant(scope: str, names: list[str], description: str | None = None) -> Granted:
    """Add permissions to ``scope`` (creating the mapping when absent), audited."""
    validate_scope(scope)
    if description is not None and len(description) > DESCRIPTION_MAX_LENGTH:
        raise ScopeMapError(f"--description is longer than {DESCRIPTION_MAX_LENGTH} characters.")
    perms = resolve_all(names)
    with transaction.atomic():
        mapping = ScopeMapping.objects.filter(scope=scope).first()
        created = mapping is None
        updated = False
        if mapping is None:
            mapping = ScopeMapping(scope=scope, description=description or "")
            full_clean(mapping)
            mapping.save()
            old_description = mapping.description
        else:
            old_description = mapping.description
            if description is not None and description != mapping.description:
                mapping.description = description
                mapping.save(update_fields=["description"])
                updated = True
        have = {perm_name(p) for p in mapping.permissions.select_related("content_type")}
        new = sorted(set(perms) - have)
        if new:
            mapping.permissions.add(*(perms[n] for n in new))
        changes: dict[str, Any] = {}
        if new or created:
            changes["permissions"] = [sorted(have), sorted(have | set(new))]
        if mapping.description != old_description or (created and mapping.description):
            changes["description"] = ["" if created else old_description, mapping.description]
        if changes:
            audit_scope(scope, "create" if created else "update", changes)
    return Granted(created, updated, new, sorted(set(perms) & have))


def existing(scope: str) -> ScopeMapping:
    mapping = ScopeMapping.objects.filter(scope=scope).first()
    if mapping is None:
        raise ScopeMapError(
            f"Unknown scope {scope!r}; see 'manage.py scopes list' for the mapped scopes."
        )
    return mapping


def delete(scope: str) -> list[str]:
    """Delete the whole mapping of ``scope``, audited; the permissions it granted."""
    mapping = existing(scope)
    with transaction.atomic():
        had = sorted(perm_name(p) for p in mapping.permissions.select_related("content_type"))
        mapping.delete()
        audit_scope(scope, "delete", {"permissions": [had, []]})
    return had


def revoke(scope: str, names: list[str]) -> tuple[list[str], list[str]]:
    """Remove permissions from ``scope``, audited: ``(removed, not granted anyway)``."""
    mapping = existing(scope)
    perms = resolve_all(names)
    with transaction.atomic():
        have = {perm_name(p) for p in mapping.permissions.select_related("content_type")}
        gone = sorted(set(perms) & have)
        if gone:
            mapping.permissions.remove(*(perms[n] for n in gone))
            audit_scope(scope, "update", {"permissions": [sorted(have), sorted(have - set(gone))]})
    return gone, sorted(set(perms) - have)


# --- export and import ---------------------------------------------------------------------


def export_document() -> dict[str, Any]:
    """The whole map as the document ``import`` reads, sorted."""
    return {
        "version": EXPORT_VERSION,
        "scopes": {
            s: {"description": d, "permissions": sorted(p)} for s, (d, p) in snapshot().items()
        },
    }


@dataclass
class Entry:
    permissions: list[str]
    description: str | None  # None: leave an existing description alone


@dataclass
class Change:
    scope: str
    kind: Literal["create", "update", "delete"]
    description: tuple[str, str] | None = None  # (old, new)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    wanted: list[str] = field(default_factory=list)  # the permissions after the change

    def describe(self) -> str:
        if self.kind == "delete":
            return f"- delete {self.scope} ({', '.join(self.removed) or 'no permissions'})"
        parts = []
        if self.description is not None:
            parts.append(f"description {self.description[0]!r} → {self.description[1]!r}")
        if self.added:
            parts.append(f"+ {', '.join(self.added)}")
        if self.removed:
            parts.append(f"- {', '.join(self.removed)}")
        if self.kind == "create":
            return f"+ create {self.scope}: {'; '.join(parts) or 'no permissions'}"
        return f"~ update {self.scope}: {'; '.join(parts)}"


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_document(text: str, source: str) -> dict[str, Entry]:
    """Parse and validate an export document; CommandError listing every problem."""
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates)
    except ValueError as exc:
        raise ScopeMapError(f"{source} is not valid JSON: {exc}") from None
    shape = (
        'expected {"version": 1, "scopes": {"SCOPE": {"description": "...", '
        '"permissions": ["app_label.codename", ...]}}}'
    )
    if not isinstance(doc, dict):
        raise ScopeMapError(f"{source}: {shape}.")
    problems: list[str] = []
    unknown = sorted(set(doc) - {"version", "scopes"})
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(map(repr, unknown))}")
    version = doc.get("version")
    if type(version) is not int or version != EXPORT_VERSION:
        problems.append(f"'version' must be {EXPORT_VERSION}, got {version!r}")
    scopes = doc.get("scopes")
    if not isinstance(scopes, dict):
        problems.append("'scopes' must be an object mapping scope → entry")
        scopes = {}
    entries: dict[str, Entry] = {}
    for scope, value in scopes.items():
        where = f"scopes[{scope!r}]"
        problem = scope_problem(scope)
        if problem:
            problems.append(f"{where}: {problem}")
        description: object = None
        if isinstance(value, list):  # shorthand: "scope": ["app.perm", ...]
            perms: object = value
        elif isinstance(value, dict):
            extra = sorted(set(value) - {"description", "permissions"})
            if extra:
                problems.append(f"{where}: unknown key(s) {', '.join(map(repr, extra))}")
            if "permissions" not in value:
                problems.append(f"{where}: missing 'permissions'")
            perms = value.get("permissions", [])
            description = value.get("description")
        else:
            problems.append(f"{where}: must be an object or a list of permissions")
            continue
        if description is not None and (
            not isinstance(description, str) or len(description) > DESCRIPTION_MAX_LENGTH
        ):
            problems.append(
                f"{where}.description: must be a string of at most "
                f"{DESCRIPTION_MAX_LENGTH} characters"
            )
            description = None
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            problems.append(f"{where}.permissions: must be a list of strings")
            continue
        entries[scope] = Entry(
            list(dict.fromkeys(perms)), description if isinstance(description, str) else None
        )
    if problems:
        raise ScopeMapError(f"{source}: {shape}.\n  " + "\n  ".join(problems))
    return entries


def plan_import(
    entries: dict[str, Entry], current: dict[str, tuple[str, frozenset[str]]], *, prune: bool
) -> list[Change]:
    changes: list[Change] = []
    for scope in sorted(entries):
        entry = entries[scope]
        wanted = frozenset(entry.permissions)
        if scope not in current:
            changes.append(
                Change(
                    scope,
                    "create",
                    description=("", entry.description) if entry.description else None,
                    added=sorted(wanted),
                    wanted=sorted(wanted),
                )
            )
            continue
        old_description, have = current[scope]
        change = Change(
            scope,
            "update",
            added=sorted(wanted - have),
            removed=sorted(have - wanted),
            wanted=sorted(wanted),
        )
        if entry.description is not None and entry.description != old_description:
            change.description = (old_description, entry.description)
        if change.added or change.removed or change.description:
            changes.append(change)
    if prune:
        for scope in sorted(set(current) - set(entries)):
            changes.append(Change(scope, "delete", removed=sorted(current[scope][1])))
    return changes


def apply_import(changes: list[Change], perms: dict[str, Permission]) -> None:
    with transaction.atomic():
        for change in changes:
            before = sorted(set(change.wanted) - set(change.added) | set(change.removed))
            if change.kind == "delete":
                for mapping in ScopeMapping.objects.filter(scope=change.scope):
                    mapping.delete()
                audit_scope(change.scope, "delete", {"permissions": [change.removed, []]})
                continue
            found = ScopeMapping.objects.filter(scope=change.scope).first()
            if found is None:
                found = ScopeMapping(scope=change.scope)
                full_clean(found)
                found.save()
            mapping = found
            audited: dict[str, Any] = {}
            if change.description is not None:
                mapping.description = change.description[1]
                mapping.save(update_fields=["description"])
                audited["description"] = list(change.description)
            if change.added or change.removed:
                mapping.permissions.set([perms[n] for n in change.wanted])
                audited["permissions"] = [before, change.wanted]
            audit_scope(change.scope, change.kind, audited)
