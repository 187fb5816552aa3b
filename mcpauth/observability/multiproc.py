"""The multiprocess metrics directory: emptied when a server starts, never while it runs.

``prometheus_client`` keeps each process's values in ``<kind>_<pid>.db`` files there and
``/metrics`` adds up every file, so the files of a previous run must go before the new run's
workers start (else its counts would be added to the new ones, and gauges would never leave).
``deploy/gunicorn.conf.py`` calls :func:`clean` in gunicorn's ``on_starting`` hook, ``make run``
through ``manage.py metrics_clean``. This module imports nothing from Django, so a process
supervisor's configuration can use it before any app is loaded.
"""

from __future__ import annotations

from pathlib import Path


def clean(directory: str | Path) -> int:
    """Delete the ``*.db`` metric files in ``directory`` (created if missing); return how many."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for file in path.glob("*.db"):
        if file.is_file():
            file.unlink(missing_ok=True)
            removed += 1
    return removed
