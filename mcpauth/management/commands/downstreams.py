"""``manage.py downstreams``: the declared downstreams and their stored secrets (write-only).

* ``list``: every declared downstream, its auth kind and URL, and the secrets stored for it
  (tenant, version, key id, last change): never a secret;
* ``set-secret NAME [--tenant T]``: store or rotate a secret, read from stdin (one line; piped,
  or typed without echo on a terminal), never from the command line where ``ps`` and shell
  history would keep it. The next tool call uses it: no restart;
* ``delete-secret NAME [--tenant T]``;
* ``reencrypt``: re-encrypt every stored secret under the first ``MCPAUTH_ENCRYPTION_KEYS`` key
  (after a key rotation; then the old key can be dropped).

Every change is audited as ``config/downstream_secret.<action>``, actor ``cli:<user>``, with the
version and key id, never the value.
"""

from __future__ import annotations

import getpass
import json
from typing import Any, TextIO

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from audit.changes import cli_actor, record_change
from mcpauth.downstream import crypto
from mcpauth.downstream.conf import get_settings
from mcpauth.downstream.models import DownstreamSecret
from mcpauth.management.commands.scopes import format_table, stdin_of
from mcpauth.models import Tenant

OBJECT = "downstream_secret"


def _audit(row: DownstreamSecret, action: str, changes: dict[str, Any]) -> None:
    tenant = row.tenant.external_id if row.tenant_id and row.tenant else ""
    record_change(
        OBJECT, action, target=str(row), actor=cli_actor(), changes=changes, tenant=tenant
    )


def _read_secret(stdin: TextIO) -> str:
    if stdin.isatty():
        return getpass.getpass("Secret (not echoed): ")
    return stdin.readline().removesuffix("\n").removesuffix("\r")


class Command(BaseCommand):
    help = (
        "The downstream systems tools call (MCPAUTH_DOWNSTREAMS) and their stored secrets: "
        "list them, set or rotate a secret (read from stdin, never shown again), delete one, "
        "re-encrypt all under the newest key. Changes apply to the next tool call."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
        p = sub.add_parser("list", help="Show the declared downstreams and their stored secrets.")
        p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
        for name, text in (
            ("set-secret", "Store or rotate a downstream's secret, read from stdin."),
            ("delete-secret", "Delete a downstream's stored secret."),
        ):
            p = sub.add_parser(name, help=text, description=text)
            p.add_argument("downstream", metavar="NAME", help="The downstream's declared name.")
            p.add_argument(
                "--tenant",
                metavar="TENANT",
                help="The tenant's external id (a downstream declared per_tenant).",
            )
        sub.add_parser(
            "reencrypt",
            help="Re-encrypt every stored secret under the first MCPAUTH_ENCRYPTION_KEYS key.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(as_json=options["json"])
        elif action == "set-secret":
            self._set(options)
        elif action == "delete-secret":
            self._delete(options)
        elif action == "reencrypt":
            self._reencrypt()
        else:  # pragma: no cover - argparse restricts the choices
            raise CommandError(f"Unknown action {action!r}.")

    def _row(self, options: dict[str, Any]) -> DownstreamSecret:
        tenant = None
        if options.get("tenant"):
            tenant = Tenant.objects.filter(external_id=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"Unknown tenant {options['tenant']!r}.")
        row = (
            DownstreamSecret.objects.select_related("tenant")
            .filter(downstream=options["downstream"], tenant=tenant)
            .first()
        )
        return row or DownstreamSecret(downstream=options["downstream"], tenant=tenant)

    def _set(self, options: dict[str, Any]) -> None:
        row = self._row(options)
        try:
            row.clean()
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        secret = _read_secret(stdin_of(options))
        before = row.audit_values() if row.pk else {}
        try:
            row.set_secret(secret)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        with transaction.atomic():
            row.save()
            changes = {k: [before.get(k), v] for k, v in row.audit_values().items()}
            _audit(row, "rotate" if before else "create", changes)
        verb = "Rotated" if before else "Stored"
        self.stdout.write(f"{verb} the secret of {row} (version {row.version}, key {row.key_id}).")

    def _delete(self, options: dict[str, Any]) -> None:
        row = self._row(options)
        if row.pk is None:
            raise CommandError(f"No secret is stored for {row}.")
        with transaction.atomic():
            _audit(row, "delete", {k: [v, None] for k, v in row.audit_values().items()})
            row.delete()
        self.stdout.write(f"Deleted the secret of {row}.")

    def _reencrypt(self) -> None:
        try:
            current = crypto.current_key_id()
        except crypto.KeyUnavailable as exc:
            raise CommandError(f"{exc} (mcpauth.E051).") from None
        done, failed = 0, []
        for row in DownstreamSecret.objects.select_related("tenant"):
            before = row.key_id
            try:
                changed = row.reencrypt()
            except crypto.KeyUnavailable:
                failed.append(str(row))
                continue
            if changed:
                with transaction.atomic():
                    row.save(update_fields=["key_id", "ciphertext", "updated_at"])
                    _audit(row, "reencrypt", {"key_id": [before, row.key_id]})
                done += 1
        self.stdout.write(f"Re-encrypted {done} secret(s) under key {current}.")
        if failed:
            raise CommandError(
                f"{len(failed)} secret(s) cannot be decrypted with the configured keys: "
                f"{', '.join(failed)}. Put back the key that encrypted them, or set them again."
            )

    def _list(self, *, as_json: bool) -> None:
        declared = get_settings().downstreams
        stored: dict[str, list[DownstreamSecret]] = {}
        for row in DownstreamSecret.objects.select_related("tenant"):
            stored.setdefault(row.downstream, []).append(row)
        names = sorted(set(declared) | set(stored))
        data: list[dict[str, Any]] = []
        for name in names:
            ds = declared.get(name)
            data.append(
                {
                    "name": name,
                    "auth": ds.kind if ds else "(not declared)",
                    "url": ds.url if ds else "",
                    "secrets": [
                        {
                            "tenant": r.tenant.external_id if r.tenant else "",
                            "version": r.version,
                            "key_id": r.key_id,
                            "updated_at": r.updated_at.isoformat(timespec="seconds"),
                        }
                        for r in stored.get(name, [])
                    ],
                }
            )
        if as_json:
            self.stdout.write(json.dumps(data, indent=2))
            return
        if not data:
            self.stdout.write("No downstream is declared (MCPAUTH_DOWNSTREAMS).")
            return
        rows = []
        for item in data:
            secrets = item["secrets"]
            summary = ", ".join(
                f"{s['tenant'] or 'every tenant'} v{s['version']} ({s['updated_at']})"
                for s in secrets
            )
            rows.append((item["name"], item["auth"], item["url"], summary or "-"))
        self.stdout.write(format_table(("NAME", "AUTH", "URL", "STORED SECRETS"), rows))
