"""The stacked bar chart as SVG geometry (drawn by the template: no script, no library)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone


@dataclass
class Bar:
    """One bucket of the chart: its calls stacked by outcome (``segments``)."""

    start: datetime
    end: datetime
    segments: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


CHART_WIDTH = 960
CHART_HEIGHT = 220
AXIS = 40


def _nice_ceiling(value: int) -> int:
    if value <= 5:
        return 5
    magnitude = 10 ** int(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return int(step * magnitude)
    return value


def _label(moment: datetime, size: int) -> str:
    local = timezone.localtime(moment)
    return f"{local:%b %d}" if size >= 86_400 else f"{local:%H:%M}"


def chart(bars: Sequence[Bar], bucket_seconds: int) -> dict[str, Any]:
    """Rectangles, ticks and labels for the stacked bar chart (drawn by the template)."""
    peak = _nice_ceiling(max((b.total for b in bars), default=0))
    inner_w, inner_h = CHART_WIDTH - AXIS - 10, CHART_HEIGHT - 30
    slot = inner_w / max(len(bars), 1)
    width = max(slot * 0.8, 1.0)
    rects: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    step = max(1, math.ceil(len(bars) / 12))
    for i, bar in enumerate(bars):
        x = AXIS + i * slot + (slot - width) / 2
        y = 10 + inner_h
        for seg in bar.segments:
            h = inner_h * seg["calls"] / peak
            y -= h
            rects.append(
                {
                    **seg,
                    "x": round(x, 2),
                    "y": round(y, 2),
                    "w": round(width, 2),
                    "h": round(max(h, 0.5), 2),
                    "title": f"{seg['calls']} {seg['label']}, "
                    f"{_label(bar.start, bucket_seconds)} to "
                    f"{timezone.localtime(bar.end):%H:%M %Z}",
                }
            )
        if i % step == 0:
            labels.append({"x": round(x + width / 2, 2), "text": _label(bar.start, bucket_seconds)})
    ticks = [
        {"y": round(10 + inner_h - inner_h * f, 2), "value": int(peak * f)}
        for f in (0, 0.25, 0.5, 0.75, 1)
    ]
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "rects": rects,
        "labels": labels,
        "ticks": ticks,
        "axis_x": AXIS,
        "baseline": 10 + inner_h,
        "right": CHART_WIDTH - 10,
        "label_y": CHART_HEIGHT - 6,
    }
