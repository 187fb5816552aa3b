"""The overview's window: presets, a custom range, narrowing; and the constants it shares."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from audit import choices
from audit.models import Outcome
from audit.timeparse import parse_instant

PRESETS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_PRESET = "24h"
#: Windows longer than this read whole days from the rollup.
ROLLUP_AFTER = timedelta(days=2)
MAX_WINDOW = timedelta(days=400)
#: ``work_mem`` for the percentile query's sort (PostgreSQL), transaction-local.
PERCENTILE_WORK_MEM = "64MB"
TOP_N = 10
#: Outcome order in the stacked chart (bottom first) and their colours.
OUTCOME_ORDER: tuple[str, ...] = (
    Outcome.OK,
    Outcome.INPUT_REQUIRED,
    Outcome.TOOL_ERROR,
    Outcome.INVALID_REQUEST,
    Outcome.NOT_EXECUTED,
    Outcome.DENIED,
    Outcome.UNAUTHENTICATED,
    Outcome.RATE_LIMITED,
    Outcome.SERVER_ERROR,
    Outcome.CANCELLED,
)
COLOURS: dict[str, str] = {
    Outcome.OK: "#3f8f4f",
    Outcome.TOOL_ERROR: "#d08c1c",
    Outcome.INVALID_REQUEST: "#b9a23a",
    Outcome.NOT_EXECUTED: "#8a8f98",
    Outcome.DENIED: "#c0392b",
    Outcome.UNAUTHENTICATED: "#8e44ad",
    Outcome.RATE_LIMITED: "#2c6fb7",
    Outcome.SERVER_ERROR: "#5b2c1a",
    Outcome.INPUT_REQUIRED: "#6fb58a",
    Outcome.CANCELLED: "#5d6d7e",
}
#: The rate groups the overview shows: (label, outcomes).
RATE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("denied", (Outcome.DENIED, Outcome.UNAUTHENTICATED)),
    ("rate-limited", (Outcome.RATE_LIMITED,)),
    (
        "errors",
        (Outcome.TOOL_ERROR, Outcome.SERVER_ERROR, Outcome.INVALID_REQUEST, Outcome.NOT_EXECUTED),
    ),
)


class WindowError(ValueError):
    """The requested window cannot be shown; the message says why."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    preset: str | None = None
    tenant: str | None = None
    client_id: str | None = None
    tool: str | None = None

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def narrowing(self) -> dict[str, str]:
        values = {"tenant": self.tenant, "client_id": self.client_id, "tool": self.tool}
        return {k: v for k, v in values.items() if v is not None}


def window_from(params: Any, *, now: datetime | None = None) -> tuple[Window, list[str]]:
    """The window a query string asks for, and what was wrong with it (then: the default)."""
    now = now or timezone.now()
    errors: list[str] = []
    narrowing = {}
    for name in ("tenant", "client_id", "tool"):
        value = params.get(name)
        if value is not None and value != "" and len(value) <= 255:
            narrowing[name] = value
    preset = params.get("window") or None
    start_raw, end_raw = params.get("start") or "", params.get("end") or ""
    if (start_raw or end_raw) and preset in (None, "custom"):
        try:
            tz = timezone.get_current_timezone()
            start = (
                parse_instant(start_raw, now=now, naive_tz=tz)
                if start_raw
                else now - PRESETS["24h"]
            )
            end = parse_instant(end_raw, now=now, naive_tz=tz) if end_raw else now
        except ValueError:
            errors.append("The custom range was not understood: use ISO 8601 date-times.")
        else:
            if end <= start:
                errors.append("The custom range must end after it starts.")
            elif end - start > MAX_WINDOW:
                errors.append(f"The custom range may span at most {MAX_WINDOW.days} days.")
            else:
                return Window(start, end, None, **narrowing), errors
    elif preset is not None and preset not in PRESETS and preset != "custom":
        errors.append("Unknown window; showing the last 24 hours.")
    chosen = preset if preset in PRESETS else DEFAULT_PRESET
    return Window(now - PRESETS[chosen], now, chosen, **narrowing), errors


def tenant_choices(limit: int = 500) -> list[tuple[str, str]]:
    """The tenants the overview offers (see :mod:`audit.choices`)."""
    return choices.tenants(limit)
