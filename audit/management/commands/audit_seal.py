"""``manage.py audit_seal``: seal every settled audit row that no seal covers yet.

Run it from a timer (a systemd timer, cron, a Kubernetes CronJob: every minute is plenty), or
keep it running with ``--every SECONDS``. It needs the private seal key (``AUDIT_SEAL_KEY_PATH``);
the web servers do not. Rows younger than ``AUDIT_SETTLE_SECONDS`` (and, on PostgreSQL, rows
that a still-open transaction could precede) wait for the next run: see :mod:`audit.horizon`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit import keys
from audit.conf import get_settings
from audit.sealing import SealConflict, SealReport, seal_pending


class Command(BaseCommand):
    help = (
        "Seal the audit trail: sign every settled, unsealed row into hash-chained blocks "
        "(Ed25519, AUDIT_SEAL_KEY_PATH). Run it from a timer, or keep it running with --every."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every",
            type=float,
            metavar="SECONDS",
            help="Keep running: seal again every SECONDS until stopped (SIGTERM or Ctrl-C).",
        )
        parser.add_argument(
            "--block-rows",
            type=int,
            metavar="N",
            help="At most N rows per seal (default AUDIT_SEAL_BLOCK_ROWS, 10000).",
        )
        parser.add_argument(
            "--max-blocks", type=int, metavar="N", help="Write at most N seals in this run."
        )
        parser.add_argument(
            "--print-public-key",
            action="store_true",
            help="Print the public key (PEM) for AUDIT_SEAL_VERIFY_KEYS on verifiers, and exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            private = keys.signing_key()
        except keys.SealKeyError as exc:
            raise CommandError(str(exc)) from None
        if options["print_public_key"]:
            self.stdout.write(keys.public_pem(private.public_key()), ending="")
            return
        block_rows = options["block_rows"]
        if block_rows is not None and not 1 <= block_rows <= 1_000_000:
            raise CommandError("--block-rows must be between 1 and 1000000.")
        max_blocks = options["max_blocks"]
        if max_blocks is not None and max_blocks < 1:
            raise CommandError("--max-blocks must be at least 1.")
        every = options["every"]
        if every is not None and not 0.1 <= every <= 86_400:
            raise CommandError("--every must be between 0.1 and 86400 seconds.")
        if get_settings().seal_key_is_dev:
            self.stderr.write("Using the development seal key (set AUDIT_SEAL_KEY_PATH).")
        if every is None:
            self._report(self._run(block_rows, max_blocks), quiet=False)
            return
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stop) if main else None
        try:
            while not stop.is_set():
                self._report(self._run(block_rows, max_blocks), quiet=True)
                stop.wait(every)
        except KeyboardInterrupt:
            pass
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        self.stdout.write("Stopped.")

    def _run(self, block_rows: int | None, max_blocks: int | None) -> SealReport:
        try:
            return seal_pending(block_rows=block_rows, max_blocks=max_blocks)
        except SealConflict as exc:
            raise CommandError(f"{exc}; run audit_seal again (one sealer at a time).") from None

    def _report(self, report: SealReport, *, quiet: bool) -> None:
        settle = get_settings().settle_seconds
        if report.seals:
            first, last = report.seals[0], report.seals[-1]
            self.stdout.write(
                f"Sealed {report.rows} row(s) in {len(report.seals)} block(s): ids "
                f"{first.first_id}-{last.last_id}; chain head {last.seal_hash}."
            )
        elif not quiet:
            self.stdout.write("Nothing to seal.")
        if report.waiting and not quiet:
            self.stdout.write(
                f"{report.waiting} newer row(s) wait until they are settled "
                f"(AUDIT_SETTLE_SECONDS={settle:g})."
            )
