"""``manage.py audit_prune``: delete audit events older than the retention period, in batches.

Each batch selects up to ``--batch-size`` ids (oldest ids first) of rows created before the
cutoff and deletes exactly those rows in one short statement, so no long lock is held and the
server keeps writing audit rows meanwhile. Safe to interrupt and re-run.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.conf import get_settings
from audit.models import AuditEvent
from audit.timeparse import AGE_HELP, before, parse_age


class Command(BaseCommand):
    help = (
        "Delete audit events older than --older-than (default: AUDIT_RETENTION_DAYS days), in "
        "batches. Asks for confirmation on a terminal; pass --yes in scripts."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help=f"Delete rows created more than AGE ago: {AGE_HELP}. "
            "Default: AUDIT_RETENTION_DAYS days.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only report how many rows would be deleted."
        )
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=5000,
            metavar="N",
            help="Rows deleted per statement (default 5000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        raw_age = options["older_than"]
        if raw_age is None:
            raw_age = f"{get_settings().retention_days}d"
        try:
            cutoff = before(timezone.now(), parse_age(raw_age))
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from None
        batch_size: int = options["batch_size"]
        if not 1 <= batch_size <= 100_000:
            raise CommandError("--batch-size must be between 1 and 100000.")

        old = AuditEvent.objects.filter(created_at__lt=cutoff)
        when = f"{cutoff:%Y-%m-%d %H:%M:%S %Z}"
        if options["dry_run"]:
            total = old.count()
            self.stdout.write(
                f"Dry run: would delete {total} audit event(s) created before {when}."
            )
            return
        stdin: TextIO = options["stdin"] if options.get("stdin") is not None else sys.stdin
        if not options["yes"] and not stdin.isatty():
            raise CommandError(
                "Refusing to delete audit events without confirmation: stdin is not a "
                "terminal. Pass --yes (or --dry-run to only count)."
            )
        total = old.count()
        if total == 0:
            self.stdout.write(f"Nothing to delete: no audit events created before {when}.")
            return
        if not options["yes"]:
            self.stdout.write(
                f"Delete {total} audit event(s) created before {when}? [y/N] ", ending=""
            )
            self.stdout.flush()
            if stdin.readline().strip().lower() not in ("y", "yes"):
                raise CommandError("Aborted; nothing deleted.")

        deleted = 0
        while True:
            ids = list(old.order_by("id").values_list("id", flat=True)[:batch_size])
            if not ids:
                break
            # QuerySet.delete(), not Model.delete() (which append-only rows refuse).
            count, _ = AuditEvent.objects.filter(pk__in=ids).delete()
            deleted += count
            self.stdout.write(f"deleted {deleted}/{total}")
            if len(ids) < batch_size:
                break
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} audit event(s) created before {when}.")
        )
