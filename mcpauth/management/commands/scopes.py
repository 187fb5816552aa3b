"""``manage.py scopes``: view and edit the OAuth scope → Django permission map.

A thin shell around :mod:`mcpauth.identity.scopemap` (the rules, the import plan, the audit rows).
Changes take effect in this process at once (the scope caches are cleared by signals); running
servers pick them up within ``MCPAUTH_CACHE_TTL`` seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mcpauth.cli import EPILOG, confirm, format_table, stdin_of
from mcpauth.identity import scopemap


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
        try:
            self._handle(options)
        except scopemap.ScopeMapError as exc:
            raise CommandError(str(exc)) from None

    def _handle(self, options: dict[str, Any]) -> None:
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
        current = scopemap.snapshot()
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
        done = scopemap.grant(scope, names, description)
        if done.created:
            self.stdout.write(f"Created scope {scope}.")
        if done.description_updated:
            self.stdout.write(f"Updated description of {scope}.")
        if done.added:
            self.stdout.write(f"Granted to {scope}: {', '.join(done.added)}")
        if done.already:
            self.stdout.write(f"Already granted to {scope}: {', '.join(done.already)}")
        if scope.endswith("*"):
            self.stdout.write(
                f"Note: this wildcard mapping applies to every token scope starting with "
                f"{scope[:-1]!r}."
            )

    def _revoke(self, scope: str, names: list[str], options: dict[str, Any]) -> None:
        scopemap.existing(scope)
        if not names:
            confirm(
                self,
                stdin_of(options),
                f"Delete scope mapping {scope!r} and everything it grants?",
                yes=options["yes"],
            )
            scopemap.delete(scope)
            self.stdout.write(f"Deleted scope {scope}.")
            return
        gone, missing = scopemap.revoke(scope, names)
        if gone:
            self.stdout.write(f"Revoked from {scope}: {', '.join(gone)}")
        if missing:
            self.stdout.write(f"Not granted by {scope} (unchanged): {', '.join(missing)}")

    def _export(self) -> None:
        self.stdout.write(json.dumps(scopemap.export_document(), indent=2))

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
        entries = scopemap.parse_document(text, source)
        perms = scopemap.resolve_all([n for e in entries.values() for n in e.permissions])
        changes = scopemap.plan_import(entries, scopemap.snapshot(), prune=options["prune"])
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
        scopemap.apply_import(changes, perms)
        self.stdout.write(f"Done: {len(changes)} change(s) applied.")
