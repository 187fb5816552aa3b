"""One definition of an exported audit row, shared by the admin export and ``audit_export``.

An export is a header (CSV only) followed by one line per row, in either format:

* ``jsonl``: one JSON object per line, every field of :data:`EXPORT_FIELDS`; ``created_at`` is
  ISO 8601 in UTC; ``arguments`` is the stored (already redacted) JSON value. Lossless.
* ``csv``: the same fields as columns; ``arguments`` is compact JSON text. Records end in CRLF
  (RFC 4180), so any value containing CR or LF is quoted: a bare CR cannot end a record and let
  the next one begin with a formula. Every text cell that a spreadsheet would read as a formula
  (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) is prefixed with ``'`` (CSV injection);
  use JSONL when byte-exact values matter.

Rows come from ``queryset.values_list(*EXPORT_FIELDS)`` (see :func:`values`), iterated with
``.iterator(chunk_size=...)`` (or :func:`aiter_rows` under ASGI) so memory stays constant
whatever the size.
"""

from __future__ import annotations

import csv
import json
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal, cast

from asgiref.sync import sync_to_async
from django.db.models import QuerySet

from audit.models import AuditEvent

ExportFormat = Literal["csv", "jsonl"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "jsonl")
CONTENT_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
}
EXPORT_FIELDS: tuple[str, ...] = (
    "id",
    "created_at",
    "request_id",
    "tenant",
    "client_id",
    "subject",
    "token_id",
    "scopes",
    "method",
    "tool",
    "outcome",
    "status",
    "error_code",
    "error_message",
    "duration_ms",
    "client_ip",
    "user_agent",
    "arguments",
    "actor",
    "trace_id",
    "issuer",
)
#: Rows joined into one chunk of output (one write / one HTTP chunk).
ROWS_PER_CHUNK = 500
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
Row = Sequence[Any]


def check_format(fmt: str) -> ExportFormat:
    if fmt == "csv":
        return "csv"
    if fmt == "jsonl":
        return "jsonl"
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


def values(queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent, tuple[Any, ...]]:
    """The queryset's rows as tuples in :data:`EXPORT_FIELDS` order (ordering kept)."""
    return queryset.values_list(*EXPORT_FIELDS)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def _csv_cell(name: str, value: Any) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _timestamp(value)
    if name == "arguments":
        value = _json(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return value
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


class _Echo:
    """A file-like object whose ``write`` hands the line back to ``csv.writer.writerow``."""

    def write(self, value: str) -> str:
        return value


def _csv_writer() -> Any:
    # QUOTE_MINIMAL quotes a value holding any character of the line terminator; with CRLF that
    # is both CR and LF (with "\n" alone, a bare CR went out unquoted and split the record).
    return csv.writer(_Echo(), lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)


def header(fmt: ExportFormat) -> str:
    """What precedes the rows: the CSV header line, nothing for JSONL."""
    return str(_csv_writer().writerow(EXPORT_FIELDS)) if fmt == "csv" else ""


def encode(row: Row, fmt: ExportFormat, *, _writer: Any = None) -> str:
    """One row (a tuple in :data:`EXPORT_FIELDS` order) as one line, newline included."""
    if fmt == "jsonl":
        record = {
            name: _timestamp(value) if isinstance(value, datetime) else value
            for name, value in zip(EXPORT_FIELDS, row, strict=True)
        }
        # U+2028/U+2029 are line breaks to some JSONL readers (str.splitlines, JavaScript).
        line = _json(record)
        if "\u2028" in line or "\u2029" in line:
            line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        return line + "\n"
    writer = _writer or _csv_writer()
    return str(
        writer.writerow(
            [_csv_cell(name, value) for name, value in zip(EXPORT_FIELDS, row, strict=True)]
        )
    )


class _Chunker:
    """Encodes rows and joins them into chunks of :data:`ROWS_PER_CHUNK` rows."""

    def __init__(self, fmt: ExportFormat) -> None:
        self.fmt = fmt
        self.writer = _csv_writer()
        self.rows: list[str] = []

    def add(self, row: Row) -> str | None:
        """Encode ``row``; a full chunk when this row completes one."""
        self.rows.append(encode(row, self.fmt, _writer=self.writer))
        if len(self.rows) < ROWS_PER_CHUNK:
            return None
        chunk, self.rows = "".join(self.rows), []
        return chunk

    def rest(self) -> str | None:
        """The last, partial chunk, if any rows are left."""
        return "".join(self.rows) if self.rows else None


def stream(rows: Iterable[Row], fmt: ExportFormat) -> Iterator[str]:
    """Header, then the rows encoded, joined into chunks of :data:`ROWS_PER_CHUNK` rows."""
    head, chunker = header(fmt), _Chunker(fmt)
    if head:
        yield head
    for row in rows:
        if (chunk := chunker.add(row)) is not None:
            yield chunk
    if (chunk := chunker.rest()) is not None:
        yield chunk


async def astream(rows: AsyncIterable[Row], fmt: ExportFormat) -> AsyncIterator[str]:
    """:func:`stream` for an async row source such as ``QuerySet.aiterator()``."""
    head, chunker = header(fmt), _Chunker(fmt)
    if head:
        yield head
    async for row in rows:
        if (chunk := chunker.add(row)) is not None:
            yield chunk
    if (chunk := chunker.rest()) is not None:
        yield chunk


async def aiter_rows(rows: QuerySet[Any, Any], chunk_size: int) -> AsyncIterator[Any]:
    """``rows.iterator(chunk_size)`` for async code: each chunk is fetched in a worker thread.

    (``QuerySet.aiterator()`` runs a ``values_list()`` query on the event loop and fails.)
    """
    iterator = cast(Generator[Any], rows.iterator(chunk_size=chunk_size))  # nothing runs yet

    def next_chunk() -> list[Any]:
        return list(islice(iterator, chunk_size))

    try:
        while True:
            chunk = await sync_to_async(next_chunk)()
            for row in chunk:
                yield row
            if len(chunk) < chunk_size:
                break
    finally:
        # Close the cursor in the thread that owns the connection.
        await sync_to_async(iterator.close)()


def filename(fmt: ExportFormat, *, now: datetime) -> str:
    return f"audit-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.{fmt}"
