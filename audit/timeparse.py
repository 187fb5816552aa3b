"""Parse the ages and instants that the audit commands take on the command line.

* an *age* is ``N`` followed by a unit: ``h`` (hours), ``d`` (days) or ``w`` (weeks), e.g.
  ``90d``; ``N`` is a positive integer;
* an *instant* is an ISO 8601 date or date-time (``2025-01-31``, ``2025-01-31T12:00``,
  ``2025-01-31T12:00:00+02:00``, ``…Z``), naive values being UTC, or an age meaning "that long
  before now" (``7d``).

Both raise :class:`ValueError` with a message fit to show the operator.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

from django.utils import timezone

_AGE_RE = re.compile(r"(?P<n>\d{1,9})(?P<unit>[hdw])")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}
AGE_HELP = "N followed by h, d or w (hours, days, weeks), e.g. 90d"


def parse_age(value: str) -> timedelta:
    """``"90d"`` → ``timedelta(days=90)``."""
    match = _AGE_RE.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(f"invalid age {value!r}: expected {AGE_HELP}")
    n = int(match["n"])
    if n <= 0:
        raise ValueError(f"invalid age {value!r}: must be greater than zero")
    try:
        return timedelta(**{_UNITS[match["unit"]]: n})
    except OverflowError:
        raise ValueError(f"invalid age {value!r}: too large") from None


def before(now: datetime, age: timedelta) -> datetime:
    """``now - age``, as a ValueError (not OverflowError) when that predates year 1."""
    try:
        return now - age
    except OverflowError:
        raise ValueError("age reaches before year 1") from None


def parse_instant(value: str, *, now: datetime | None = None, naive_tz: tzinfo = UTC) -> datetime:
    """An aware datetime from an ISO 8601 date/date-time or an age before now.

    A naive date-time is in ``naive_tz``: UTC on the command line, the current time zone in
    the admin (whose forms show local times).
    """
    text = value.strip()
    if _AGE_RE.fullmatch(text.lower()):
        return before(now or timezone.now(), parse_age(text))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid date {value!r}: expected ISO 8601 (2025-01-31 or 2025-01-31T12:00:00Z) "
            f"or a relative age ({AGE_HELP})"
        ) from None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, naive_tz)
    return parsed
