"""``manage.py audit_export``: stream audit events as CSV or JSONL, oldest first.

Rows are read with a chunked iterator (a server-side cursor on PostgreSQL), so memory stays
flat for any number of rows. The data goes to stdout or ``--output``; the summary (and, on a
terminal, a progress counter) goes to stderr so that it never mixes with the data. The row
format is :mod:`audit.export`'s, the same as the admin's "Export" links.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit import export
from audit.models import AuditEvent, Outcome
from audit.timeparse import AGE_HELP, parse_instant

PROGRESS_EVERY = 10_000


def _plain(text: str) -> str:
    return text


class Command(BaseCommand):
    help = (
        "Export audit events as CSV or JSONL (oldest first) to stdout or --output, optionally "
        "filtered by time range, tenant and outcome. Arguments are already redacted."
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
        parser.add_argument("--outcome", choices=Outcome.values, help="Only this outcome.")
        parser.add_argument(
            "--format", choices=export.FORMATS, default="csv", help="Output format (default csv)."
        )
        parser.add_argument(
            "--output", "-o", metavar="FILE", help="Write to FILE instead of stdout ('-': stdout)."
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

        queryset = AuditEvent.objects.order_by("created_at", "id")
        if since is not None:
            queryset = queryset.filter(created_at__gte=since)
        if until is not None:
            queryset = queryset.filter(created_at__lt=until)
        if options["tenant"] is not None:
            queryset = queryset.filter(tenant=options["tenant"])
        if options["outcome"] is not None:
            queryset = queryset.filter(outcome=options["outcome"])

        rows = export.values(queryset).iterator(chunk_size=chunk_size)
        counter = _Counter(self, rows)
        output = options["output"]
        if output and output != "-":
            self._to_file(output, export.stream(counter, fmt))
        else:
            for chunk in export.stream(counter, fmt):
                self.stdout.write(chunk, ending="")
            self.stdout.flush()
        counter.done()
        where = f" to {output}" if output and output != "-" else ""
        self.stderr.write(f"Exported {counter.count} audit event(s){where}.", style_func=_plain)

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
        try:
            handle: TextIO = open(path, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc.strerror or exc}") from None
        try:
            with handle:
                for chunk in chunks:
                    handle.write(chunk)
        except BaseException:
            # Leave no truncated export behind that could pass for a complete one.
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise


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
