"""``manage.py audit_prune``: delete audit rows past the retention period, whole sealed blocks.

A block (one seal and its rows) goes when its newest row is older than the cutoff, oldest block
first and never the newest seal, so the rows kept are still one verifiable chain from the first
kept block (see :mod:`audit.retention`). Rows not sealed yet are never deleted: run
``audit_seal`` first. Each block is its own short transaction, so the server keeps writing
meanwhile, and an interrupted run can simply be run again. Each block deleted is audited
(``audit/prune``) in the transaction that deletes it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from audit.changes import cli_actor, record_prune
from audit.conf import get_settings
from audit.models import AuditEvent, AuditSeal
from audit.retention import PruneReport, prunable_blocks, prune
from audit.timeparse import AGE_HELP, before, parse_age


class Command(BaseCommand):
    help = (
        "Delete audit events older than --older-than (default: AUDIT_RETENTION_DAYS days), "
        "whole sealed blocks at a time. Asks for confirmation on a terminal; pass --yes in "
        "scripts."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help=f"Delete blocks whose rows were all created more than AGE ago: {AGE_HELP}. "
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
            help="Ids per DELETE statement within a block (default 5000).",
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

        when = f"{cutoff:%Y-%m-%d %H:%M:%S %Z}"
        blocks = prunable_blocks(cutoff)
        total = sum(b.row_count for b in blocks)
        last_id = blocks[-1].last_id if blocks else 0
        kept_old = AuditEvent.objects.filter(id__gt=last_id, created_at__lt=cutoff).count()
        if options["dry_run"]:
            self.stdout.write(
                f"Dry run: would delete {total} audit event(s) in {len(blocks)} sealed "
                f"block(s), all created before {when}."
            )
            self._kept(kept_old)
            return
        stdin: TextIO = options["stdin"] if options.get("stdin") is not None else sys.stdin
        if not options["yes"] and not stdin.isatty():
            raise CommandError(
                "Refusing to delete audit events without confirmation: stdin is not a "
                "terminal. Pass --yes (or --dry-run to only count)."
            )
        if not blocks:
            self.stdout.write(f"Nothing to delete: no sealed block older than {when}.")
            self._kept(kept_old)
            return
        if not options["yes"]:
            self.stdout.write(
                f"Delete {total} audit event(s) in {len(blocks)} sealed block(s), created "
                f"before {when}? [y/N] ",
                ending="",
            )
            self.stdout.flush()
            if stdin.readline().strip().lower() not in ("y", "yes"):
                raise CommandError("Aborted; nothing deleted.")

        done = PruneReport()

        def progress(report: PruneReport) -> None:
            nonlocal done
            done = report  # each block's deletion has committed by now
            self.stdout.write(f"deleted {report.rows}/{total}")

        actor = cli_actor()

        def audit_block(seal: AuditSeal, rows: int) -> None:
            # committed with the block's deletion: a block is never gone without its row
            record_prune(
                actor=actor,
                details={
                    "older_than": raw_age,
                    "cutoff": cutoff.isoformat(),
                    "seal": seal.pk,
                    "rows": rows,
                    "first_id": seal.first_id,
                    "last_id": seal.last_id,
                },
            )

        try:
            report = prune(cutoff, batch_size=batch_size, progress=progress, audit=audit_block)
        except DatabaseError as exc:
            raise CommandError(
                f"Pruning stopped after {done.rows} audit event(s) in {done.blocks} block(s) "
                f"(each recorded): {exc.__class__.__name__}. Run audit_prune again to continue."
            ) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {report.rows} audit event(s) in {report.blocks} sealed block(s), "
                f"created before {when}."
            )
        )
        self._kept(kept_old)

    def _kept(self, count: int) -> None:
        if count:
            self.stdout.write(
                f"Kept {count} older row(s) that are not in a prunable sealed block yet (not "
                "sealed, or sealed with newer rows); run audit_seal first."
            )
