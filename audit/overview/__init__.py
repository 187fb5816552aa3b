"""The figures of ``/admin/audit/overview/``: one window of MCP calls, at a glance.

Every figure counts exactly the rows that its link selects in the changelist (same time range,
outcomes, tenant/client/tool, ``kind=call``). To stay fast on many million rows:

* windows longer than :data:`ROLLUP_AFTER` read whole UTC days from
  :class:`~audit.models.AuditRollup` (the sealed rows, kept current by ``audit_seal``) and only
  the rest from the table itself: the partial days at both ends, and the rows past the last
  sealed id. Shorter windows read the table, on its time index.
* p50/p95 per tool use ``percentile_cont`` on PostgreSQL; elsewhere each percentile is read
  with ``ORDER BY duration_ms LIMIT 2 OFFSET k`` and interpolated the same way.

Modules: :mod:`~audit.overview.window` (what to show), :mod:`~audit.overview.counts` (the
queries), :mod:`~audit.overview.figures` (the page's figures and links),
:mod:`~audit.overview.chart` (the SVG geometry).
"""

from audit.overview.counts import (
    DIMS,
    Counts,
    EpochBucket,
    PercentileCont,
    count,
    percentiles,
    sources,
)
from audit.overview.figures import Bar, Overview, build, changelist_url
from audit.overview.window import (
    COLOURS,
    DEFAULT_PRESET,
    MAX_WINDOW,
    OUTCOME_ORDER,
    PERCENTILE_WORK_MEM,
    PRESETS,
    RATE_GROUPS,
    ROLLUP_AFTER,
    TOP_N,
    Window,
    WindowError,
    tenant_choices,
    window_from,
)

__all__ = [
    "COLOURS",
    "DEFAULT_PRESET",
    "DIMS",
    "MAX_WINDOW",
    "OUTCOME_ORDER",
    "PERCENTILE_WORK_MEM",
    "PRESETS",
    "RATE_GROUPS",
    "ROLLUP_AFTER",
    "TOP_N",
    "Bar",
    "Counts",
    "EpochBucket",
    "Overview",
    "PercentileCont",
    "Window",
    "WindowError",
    "build",
    "changelist_url",
    "count",
    "percentiles",
    "sources",
    "tenant_choices",
    "window_from",
]
