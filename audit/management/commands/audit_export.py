"""``manage.py audit_export``: stream audit events as CSV or JSONL, oldest first.

Rows are read with a chunked iterator (a server-side cursor on PostgreSQL), so memory stays
flat for any number of rows. The data goes to stdout or ``--output``; the summary (and, on a
terminal, a progress counter) goes to stderr so that it never mixes with the data. The row
format is :mod:`audit.export`'s, the same as the admin's "Export" links. Every export is itself
audited (``audit/export``, with the filter used and the number of rows).

``--follow`` keeps running and writes new rows as they commit, in id order, up to the settled
horizon (:mod:`audit.horizon`): a row is written once no row with a lower id can still appear,
so the stream never goes back. Each JSONL line carries its ``id``; restart with
``--after-id <last id written>`` to continue without a gap or a duplicate. This is the hook for
Vector, Fluent Bit or a SIEM agent reading stdout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import FrameType
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit import export
from audit.changes import cli_actor, record_export
from audit.horizon import settled_horizon
from audit.models import AuditEvent, Outcome
from audit.timeparse import AGE_HELP, parse_instant

PROGRESS_EVERY = 10_000


def _plain(text: str) -> str:
    return text


class Command(BaseCommand):
    help = (
        "Export audit events as CSV or JSONL (oldest first) to stdout or --output, optionally "
        "filtered by time range, tenant, issuer and outcome. Arguments are already redacted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        when = (
            "an ISO 8601 date or date-time (naive = UTC, e.g. 2025-01-31 or "
            f"2025-01-31T12:00:00Z) or a relative age ({AGE_HELP}, meaning that long ago)"
        )
        parser.add_argument(
            "--since", metavar="WHEN", help=f"Only rows created at or after WHEN: {when}."
        )
        parser.add_argument("--until", metavar="WHEN", help="Only rows created before WHEN.")
        parser.add_argument("--tenant", help="Only this tenant (its external id).")
        parser.add_argument(
            "--issuer", help="Only rows of this issuer (the caller's token's, or the change's)."
        )
        parser.add_argument("--outcome", choices=Outcome.values, help="Only this outcome.")
        parser.add_argument(
            "--format", choices=export.FORMATS, default="csv", help="Output format (default csv)."
        )
        parser.add_argument(
            "--output", "-o", metavar="FILE", help="Write to FILE instead of stdout ('-': stdout)."
        )
        parser.add_argument(
            "--follow",
            action="store_true",
            help="Keep running: after the matching rows, write new rows as they commit, in id "
            "order (until SIGTERM or Ctrl-C).",
        )
        parser.add_argument(
            "--after-id",
            type=int,
            metavar="N",
            help="Only rows with an id greater than N (to resume a --follow stream).",
        )
        parser.add_argument(
            "--poll",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="With --follow: how often to look for new rows (default 1).",
        )
        parser.add_argument(
            "--idle-exit",
            type=float,
            metavar="SECONDS",
            help="With --follow: stop after SECONDS without a new row (catch up, then exit).",
        )
        parser.add_argument(
            "--chunk-size",
            type=int,
            default=2000,
            metavar="N",
            help="Rows fetched per database round trip (default 2000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        fmt = self._format(options["format"])
        chunk_size: int = options["chunk_size"]
        if not 1 <= chunk_size <= 100_000:
            raise CommandError("--chunk-size must be between 1 and 100000.")
        now = timezone.now()
        since = self._instant("--since", options["since"], now)
        until = self._instant("--until", options["until"], now)
        if since is not None and until is not None and since >= until:
            raise CommandError("--since must be earlier than --until.")
        after_id: int | None = options["after_id"]
        if after_id is not None and after_id < 0:
            raise CommandError("--after-id must be 0 or more.")
        follow: bool = options["follow"]
        if follow and until is not None:
            raise CommandError("--follow cannot be combined with --until.")
        if not follow and (options["idle_exit"] is not None):
            raise CommandError("--idle-exit only applies with --follow.")
        if not 0.05 <= options["poll"] <= 3600:
            raise CommandError("--poll must be between 0.05 and 3600 seconds.")

        queryset = AuditEvent.objects.all()
        if since is not None:
            queryset = queryset.filter(created_at__gte=since)
        if until is not None:
            queryset = queryset.filter(created_at__lt=until)
        if options["tenant"] is not None:
            queryset = queryset.filter(tenant=options["tenant"])
        if options["issuer"] is not None:
            queryset = queryset.filter(issuer=options["issuer"])
        if options["outcome"] is not None:
            queryset = queryset.filter(outcome=options["outcome"])
        filters = [
            (name, options[key])
            for name, key in (
                ("since", "since"),
                ("until", "until"),
                ("tenant", "tenant"),
                ("issuer", "issuer"),
                ("outcome", "outcome"),
                ("after_id", "after_id"),
                ("follow", "follow"),
            )
            if options[key] not in (None, False)
        ]
        output = options["output"]
        if follow:
            record_export(actor=cli_actor(), fmt=fmt, filters=filters)
            self._follow(queryset, fmt, after_id or 0, chunk_size, options)
            return
        if after_id is not None:
            queryset = queryset.filter(id__gt=after_id)
        rows = export.values(queryset.order_by("created_at", "id")).iterator(chunk_size=chunk_size)
        counter = _Counter(self, rows)
        completed = False
        try:
            if output and output != "-":
                self._to_file(output, export.stream(counter, fmt))
            else:
                for chunk in export.stream(counter, fmt):
                    self.stdout.write(chunk, ending="")
                self.stdout.flush()
            completed = True
        finally:
            record_export(
                actor=cli_actor(), fmt=fmt, filters=filters, rows=counter.count, completed=completed
            )
        counter.done()
        where = f" to {output}" if output and output != "-" else ""
        self.stderr.write(f"Exported {counter.count} audit event(s){where}.", style_func=_plain)

    def _follow(
        self,
        queryset: Any,
        fmt: export.ExportFormat,
        after_id: int,
        chunk_size: int,
        options: dict[str, Any],
    ) -> None:
        """Write rows past ``after_id`` in id order up to the settled horizon, forever."""
        if options["output"] and options["output"] != "-":
            raise CommandError("--follow writes to stdout; pipe it where it should go.")
        poll: float = options["poll"]
        idle_exit: float | None = options["idle_exit"]
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stop) if main else None
        head = export.header(fmt)
        if head:
            self.stdout.write(head, ending="")
        last, written, idle_since = after_id, 0, time.monotonic()
        try:
            while not stop.is_set():
                horizon = settled_horizon(last)
                rows = list(
                    export.values(queryset.filter(id__gt=last, id__lte=horizon).order_by("id"))[
                        :chunk_size
                    ]
                )
                if rows:
                    self.stdout.write("".join(export.encode(row, fmt) for row in rows), ending="")
                    self.stdout.flush()
                    written += len(rows)
                    idle_since = time.monotonic()
                # Rows past the filter still move the position: the next query starts there.
                last = max(last, int(rows[-1][0]) if rows else last)
                if len(rows) < chunk_size:
                    last = max(last, horizon)
                    if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                        break
                    stop.wait(poll)
        except KeyboardInterrupt:
            pass
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        self.stderr.write(
            f"Followed: wrote {written} audit event(s); resume with --after-id {last}.",
            style_func=_plain,
        )

    def _format(self, value: str) -> export.ExportFormat:
        try:
            return export.check_format(value)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _instant(self, flag: str, value: str | None, now: datetime) -> datetime | None:
        if value is None:
            return None
        try:
            return parse_instant(value, now=now)
        except ValueError as exc:
            raise CommandError(f"{flag}: {exc}") from None

    def _to_file(self, path: str, chunks: Iterator[str]) -> None:
        """Write a regular file through a temporary file beside it, renamed over it only when
        complete: a failed export leaves neither a truncated file nor a lost earlier one. A
        pipe or device (``/dev/stdout``, ``>(gzip …)``, a FIFO) is written straight through."""
        real = os.path.realpath(path)  # a symlinked target is written through, not replaced
        try:
            special = os.path.exists(real) and not stat.S_ISREG(os.stat(real).st_mode)
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc.strerror or exc}") from None
        if special:
            self._write(path, lambda: open(path, "w", encoding="utf-8", newline=""), chunks)
            return
        try:
            fd, partial = tempfile.mkstemp(prefix=".audit-export-", dir=os.path.dirname(real))
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc.strerror or exc}") from None
        try:
            self._write(path, lambda: open(fd, "w", encoding="utf-8", newline=""), chunks)
            os.replace(partial, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    @staticmethod
    def _write(path: str, opener: Callable[[], TextIO], chunks: Iterator[str]) -> None:
        try:
            with opener() as handle:
                for chunk in chunks:
                    handle.write(chunk)
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc.strerror or exc}") from None


class _Counter:
    """Counts the rows passing through; on a terminal, shows the count on stderr."""

    def __init__(self, command: BaseCommand, rows: Iterator[Any]) -> None:
        self.command = command
        self.rows = rows
        self.count = 0
        self.tty = command.stderr.isatty()

    def __iter__(self) -> Iterator[Any]:
        for row in self.rows:
            self.count += 1
            if self.tty and self.count % PROGRESS_EVERY == 0:
                self.command.stderr.write(f"\r{self.count} rows…", ending="", style_func=_plain)
                self.command.stderr.flush()
            yield row

    def done(self) -> None:
        if self.tty and self.count >= PROGRESS_EVERY:
            self.command.stderr.write("\r", ending="", style_func=_plain)
