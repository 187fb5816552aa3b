"""``manage.py scopes``: view and edit the OAuth scope → Django permission map.

Changes take effect in this process at once (the scope caches are cleared by signals); running
servers pick them up within ``MCPAUTH_CACHE_TTL`` seconds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from audit.config import cli_actor, record_change
from mcpauth.models import ScopeMapping, scope_problem
from mcpauth.scopes import perm_name, resolve_permissions

EXPORT_VERSION = 1
DESCRIPTION_MAX_LENGTH: int = getattr(
    ScopeMapping._meta.get_field("description"), "max_length", 255
)
_PERM_HINT = "Permissions are written app_label.codename, e.g. todos.view_todo."
EPILOG = (
    "Changes apply to this process at once; running servers pick them up within "
    "MCPAUTH_CACHE_TTL seconds."
)


# --- helpers shared with the ``clients`` command ------------------------------------------


def confirm(command: BaseCommand, stdin: TextIO, question: str, *, yes: bool) -> None:
    """Return when the operator agreed (``--yes`` or "y" on a terminal); else CommandError."""
    if yes:
        return
    if not stdin.isatty():
        raise CommandError(f"{question} Refusing without --yes (stdin is not a terminal).")
    command.stdout.write(f"{question} [y/N] ", ending="")
    command.stdout.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("Aborted; nothing changed.")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def stdin_of(options: dict[str, Any]) -> TextIO:
    stdin: TextIO | None = options.get("stdin")
    return stdin if stdin is not None else sys.stdin


# --- validation ----------------------------------------------------------------------------


def validate_scope(scope: str) -> str:
    """The model's own validation (``ScopeMapping.clean``), as a CommandError."""
    try:
        ScopeMapping(scope=scope).clean()
    except ValidationError as exc:
        raise CommandError(f"Invalid scope: {'; '.join(exc.messages)}") from None
    return scope


def full_clean(mapping: ScopeMapping) -> None:
    """The model's validation (``clean()`` included) before a new mapping is saved."""
    try:
        mapping.full_clean(exclude=["permissions"])
    except ValidationError as exc:
        raise CommandError(f"Invalid scope: {'; '.join(exc.messages)}") from None


def audit_scope(scope: str, action: str, changes: dict[str, Any]) -> None:
    """Audit a change to the scope map (``config/scope_mapping.<action>``, actor ``cli:…``)."""
    record_change(ScopeMapping, action, target=scope, actor=cli_actor(), changes=changes)


def resolve_all(names: list[str]) -> dict[str, Permission]:
    """``{name: Permission}`` for every name; one CommandError listing all unknown ones."""
    found: dict[str, Permission] = {}
    problems: list[str] = []
    for name in dict.fromkeys(names):
        try:
            (found[name],) = resolve_permissions([name])
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise CommandError(f"Unknown permission(s): {'; '.join(problems)}. {_PERM_HINT}")
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


# --- import --------------------------------------------------------------------------------


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
        raise CommandError(f"{source} is not valid JSON: {exc}") from None
    shape = (
        'expected {"version": 1, "scopes": {"SCOPE": {"description": "...", '
        '"permissions": ["app_label.codename", ...]}}}'
    )
    if not isinstance(doc, dict):
        raise CommandError(f"{source}: {shape}.")
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
        raise CommandError(f"{source}: {shape}.\n  " + "\n  ".join(problems))
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


# --- the command ---------------------------------------------------------------------------


class Command(BaseCommand):
    help = (
        "View and edit the OAuth scope → Django permission map (ScopeMapping). A scope ending "
        "in '*' applies to every token scope with that prefix. " + EPILOG
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")

        p = sub.add_parser("list", help="Show every scope and the permissions it grants.")
        p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

        p = sub.add_parser(
            "grant",
            help="Add permissions to a scope (creating the scope if needed).",
            description="Add permissions to a scope, creating the mapping when absent. " + EPILOG,
        )
        p.add_argument("scope", metavar="SCOPE", help="OAuth scope, e.g. todo:read or mcp:*.")
        p.add_argument("perms", metavar="PERM", nargs="+", help="Permission as app_label.codename.")
        p.add_argument("--description", help="Set the scope's description.")

        p = sub.add_parser(
            "revoke",
            help="Remove permissions from a scope, or delete the scope.",
            description="Remove the given permissions from SCOPE; with no PERM, delete the "
            "whole mapping (asks for confirmation; --yes skips it). " + EPILOG,
        )
        p.add_argument("scope", metavar="SCOPE", help="An existing mapped scope.")
        p.add_argument(
            "perms",
            metavar="PERM",
            nargs="*",
            help="Permission(s) to remove; omit to delete the whole mapping.",
        )
        p.add_argument(
            "--yes", action="store_true", help="Do not ask before deleting a whole mapping."
        )

        sub.add_parser(
            "export",
            help="Print the whole map as JSON (the format 'import' reads).",
            description='Print {"version": 1, "scopes": {SCOPE: {"description": ..., '
            '"permissions": [...]}}}, sorted, to stdout.',
        )

        p = sub.add_parser(
            "import",
            help="Make the map match a JSON file written by 'export'.",
            description="Set each scope in FILE to exactly the permissions listed there "
            "(and its description, when given). Scopes not in FILE are kept unless --prune. "
            "The file is validated completely before anything changes, and the changes are "
            "applied in one transaction. " + EPILOG,
        )
        p.add_argument("file", metavar="FILE", help="Path to the JSON file, or - for stdin.")
        p.add_argument(
            "--dry-run", action="store_true", help="Print what would change; change nothing."
        )
        p.add_argument(
            "--prune", action="store_true", help="Also delete mappings that are not in FILE."
        )
        p.add_argument("--yes", action="store_true", help="Do not ask before pruning.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(as_json=options["json"])
        elif action == "grant":
            self._grant(options["scope"], options["perms"], options.get("description"))
        elif action == "revoke":
            self._revoke(options["scope"], options["perms"], options)
        elif action == "export":
            self._export()
        elif action == "import":
            self._import(options)
        else:  # pragma: no cover - argparse restricts the choices
            raise CommandError(f"Unknown action {action!r}.")

    # --- actions ---------------------------------------------------------------------------

    def _list(self, *, as_json: bool) -> None:
        current = snapshot()
        if as_json:
            data = [
                {"scope": s, "description": d, "permissions": sorted(p)}
                for s, (d, p) in current.items()
            ]
            self.stdout.write(json.dumps(data, indent=2))
            return
        if not current:
            self.stdout.write("No scope mappings. Add one with: manage.py scopes grant SCOPE PERM")
            return
        rows = [(s, ", ".join(sorted(p)) or "(none)", d) for s, (d, p) in current.items()]
        self.stdout.write(format_table(("SCOPE", "PERMISSIONS", "DESCRIPTION"), rows))

    def _grant(self, scope: str, names: list[str], description: str | None) -> None:
        validate_scope(scope)
        if description is not None and len(description) > DESCRIPTION_MAX_LENGTH:
            raise CommandError(f"--description is longer than {DESCRIPTION_MAX_LENGTH} characters.")
        perms = resolve_all(names)
        with transaction.atomic():
            mapping = ScopeMapping.objects.filter(scope=scope).first()
            created = mapping is None
            if mapping is None:
                mapping = ScopeMapping(scope=scope, description=description or "")
                full_clean(mapping)
                mapping.save()
                self.stdout.write(f"Created scope {scope}.")
                old_description = mapping.description
            else:
                old_description = mapping.description
                if description is not None and description != mapping.description:
                    mapping.description = description
                    mapping.save(update_fields=["description"])
                    self.stdout.write(f"Updated description of {scope}.")
            have = {perm_name(p) for p in mapping.permissions.select_related("content_type")}
            new = sorted(set(perms) - have)
            if new:
                mapping.permissions.add(*(perms[n] for n in new))
                self.stdout.write(f"Granted to {scope}: {', '.join(new)}")
            already = sorted(set(perms) & have)
            if already:
                self.stdout.write(f"Already granted to {scope}: {', '.join(already)}")
            changes: dict[str, Any] = {}
            if new or created:
                changes["permissions"] = [sorted(have), sorted(have | set(new))]
            if mapping.description != old_description or (created and mapping.description):
                changes["description"] = ["" if created else old_description, mapping.description]
            if changes:
                audit_scope(scope, "create" if created else "update", changes)
        if scope.endswith("*"):
            self.stdout.write(
                f"Note: this wildcard mapping applies to every token scope starting with "
                f"{scope[:-1]!r}."
            )

    def _revoke(self, scope: str, names: list[str], options: dict[str, Any]) -> None:
        mapping = ScopeMapping.objects.filter(scope=scope).first()
        if mapping is None:
            raise CommandError(
                f"Unknown scope {scope!r}; see 'manage.py scopes list' for the mapped scopes."
            )
        if not names:
            confirm(
                self,
                stdin_of(options),
                f"Delete scope mapping {scope!r} and everything it grants?",
                yes=options["yes"],
            )
            with transaction.atomic():
                had = sorted(
                    perm_name(p) for p in mapping.permissions.select_related("content_type")
                )
                mapping.delete()
                audit_scope(scope, "delete", {"permissions": [had, []]})
            self.stdout.write(f"Deleted scope {scope}.")
            return
        perms = resolve_all(names)
        with transaction.atomic():
            have = {perm_name(p) for p in mapping.permissions.select_related("content_type")}
            gone = sorted(set(perms) & have)
            if gone:
                mapping.permissions.remove(*(perms[n] for n in gone))
                audit_scope(
                    scope, "update", {"permissions": [sorted(have), sorted(have - set(gone))]}
                )
                self.stdout.write(f"Revoked from {scope}: {', '.join(gone)}")
        missing = sorted(set(perms) - have)
        if missing:
            self.stdout.write(f"Not granted by {scope} (unchanged): {', '.join(missing)}")

    def _export(self) -> None:
        doc = {
            "version": EXPORT_VERSION,
            "scopes": {
                s: {"description": d, "permissions": sorted(p)} for s, (d, p) in snapshot().items()
            },
        }
        self.stdout.write(json.dumps(doc, indent=2))

    def _import(self, options: dict[str, Any]) -> None:
        path: str = options["file"]
        stdin = stdin_of(options)
        if path == "-":
            source, text = "stdin", stdin.read()
        else:
            source = path
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"Cannot read {path}: {exc}") from None
        entries = parse_document(text, source)
        perms = resolve_all([n for e in entries.values() for n in e.permissions])
        changes = plan_import(entries, snapshot(), prune=options["prune"])
        if not changes:
            self.stdout.write(f"No changes: the scope map already matches {source}.")
            return
        verb = "Would apply" if options["dry_run"] else "Applying"
        self.stdout.write(f"{verb} {len(changes)} change(s) from {source}:")
        for change in changes:
            self.stdout.write(f"  {change.describe()}")
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing changed.")
            return
        deletions = [c.scope for c in changes if c.kind == "delete"]
        if deletions:
            if path == "-" and not options["yes"]:
                raise CommandError(
                    "--prune would delete mappings; pass --yes (stdin is the import file, so "
                    "there is no one to ask)."
                )
            confirm(
                self,
                stdin,
                f"Delete {len(deletions)} mapping(s) not in {source}?",
                yes=options["yes"],
            )
        apply_import(changes, perms)
        self.stdout.write(f"Done: {len(changes)} change(s) applied.")
