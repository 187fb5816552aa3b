"""``manage.py audit_verify``: prove the audit trail untouched, or name the first bad row or seal.

Exit status: 0 when every checked seal and row is intact; 1 when something was changed,
deleted or inserted (the message names the first bad row id or seal); 2 when verification could
not run (no key, bad options).
"""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit import keys
from audit.timeparse import AGE_HELP, parse_instant
from audit.verify import VerifyReport, verify

EXIT_TAMPERED = 1
EXIT_CANNOT_VERIFY = 2


class Command(BaseCommand):
    help = (
        "Re-check the audit trail's seal chain and signatures against the rows. Exits 0 when "
        "intact, 1 naming the first changed, deleted or inserted row (or bad seal), 2 when it "
        "cannot verify."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            metavar="WHEN",
            help="Only check the seals holding rows created at or after WHEN (and their link "
            "to the seal before): an ISO 8601 date or date-time (naive = UTC) or a relative "
            f"age ({AGE_HELP}).",
        )
        parser.add_argument(
            "--expect-head",
            metavar="HASH",
            help="A chain head recorded earlier outside the database (audit_seal prints it): "
            "exit 1 unless that seal is still in the chain, which catches the newest seals "
            "being removed with their rows.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since = None
        if options["since"] is not None:
            try:
                since = parse_instant(options["since"], now=timezone.now())
            except ValueError as exc:
                raise CommandError(f"--since: {exc}", returncode=EXIT_CANNOT_VERIFY) from None
        expect_head = options["expect_head"]
        if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
            raise CommandError(
                "--expect-head: a seal hash is 64 lowercase hex characters.",
                returncode=EXIT_CANNOT_VERIFY,
            )
        try:
            report = verify(since=since, expect_head=expect_head, progress=self._progress)
        except keys.SealKeyError as exc:
            raise CommandError(str(exc), returncode=EXIT_CANNOT_VERIFY) from None
        self._done(report)

    def _progress(self, report: VerifyReport) -> None:
        if self.stderr.isatty() and report.seals % 20 == 0:
            self.stderr.write(f"\r{report.seals} seal(s), {report.rows} row(s)…", ending="")
            self.stderr.flush()

    def _done(self, report: VerifyReport) -> None:
        if self.stderr.isatty():
            self.stderr.write("\r", ending="")
        if report.first_seal is None:
            self.stdout.write("No seals to check yet (run audit_seal).")
        else:
            assert report.last_seal is not None
            self.stdout.write(
                f"Checked {report.seals} seal(s) covering ids {report.first_seal.first_id}-"
                f"{report.last_seal.last_id} ({report.rows} row(s))."
            )
            if report.pruned_before:
                self.stdout.write(
                    f"The chain starts at seal {report.first_seal.pk}: older blocks were pruned."
                )
        if report.unsealed:
            self.stdout.write(f"{report.unsealed} newer row(s) are not sealed yet.")
        if report.head is not None:
            self.stdout.write(f"Chain head: {report.head}")
        if report.ok:
            self.stdout.write(self.style.SUCCESS("The audit trail is intact."))
            return
        for problem in report.problems:
            self.stdout.write(f"  {problem}")
        first = report.problems[0]
        raise CommandError(f"The audit trail is NOT intact: {first}.", returncode=EXIT_TAMPERED)
