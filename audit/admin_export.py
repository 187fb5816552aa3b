"""The admin export's own audit row: written when the stream ends, rows sent, completed or not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest

from audit import export
from audit.changes import record_export, request_actor


class ExportAudit:
    """Streams an export and audits it when the stream ends (rows sent, completed or not)."""

    def __init__(
        self, request: HttpRequest, fmt: export.ExportFormat, filters: list[tuple[str, str]]
    ) -> None:
        self.actor = request_actor(request)
        self.request = request
        self.fmt = fmt
        self.filters = filters
        self.rows = 0

    def _record(self, completed: bool) -> None:
        record_export(
            actor=self.actor,
            fmt=self.fmt,
            filters=self.filters,
            rows=self.rows,
            completed=completed,
            request=self.request,
        )

    def _count(self, rows: Iterator[Any]) -> Iterator[Any]:
        for row in rows:
            self.rows += 1
            yield row

    def stream(self, rows: Iterator[Any]) -> Iterator[str]:
        completed = False
        try:
            yield from export.stream(self._count(rows), self.fmt)
            completed = True
        finally:
            self._record(completed)

    async def astream(self, rows: AsyncIterator[Any]) -> AsyncIterator[str]:
        async def counted() -> AsyncIterator[Any]:
            async for row in rows:
                self.rows += 1
                yield row

        completed = False
        try:
            async for chunk in export.astream(counted(), self.fmt):
                yield chunk
            completed = True
        finally:
            await sync_to_async(self._record)(completed)
