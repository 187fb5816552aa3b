"""``manage.py metrics_clean --yes``: empty the multiprocess metrics directory before a start.

Run it while no server of this ``MCPAUTH_METRICS_DIR`` is running (``make run`` does, just
before it starts uvicorn; gunicorn's ``on_starting`` hook does the same in
``deploy/gunicorn.conf.py``): the running workers' counts would be lost otherwise.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mcpauth.observability.conf import get_settings
from mcpauth.observability.multiproc import clean


class Command(BaseCommand):
    help = (
        "Delete the Prometheus multiprocess files (*.db) in MCPAUTH_METRICS_DIR. Run it "
        "before the server starts, never while it runs. Needs --yes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--yes", action="store_true", help="Delete without asking (required: no prompt)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory = get_settings().multiproc_dir
        if not directory:
            raise CommandError(
                "MCPAUTH_METRICS_DIR is not set: metrics are kept per process, nothing to clean."
            )
        if not options["yes"]:
            raise CommandError(
                f"This deletes the metric files in {directory}; pass --yes (no server may be "
                "running on them)."
            )
        try:
            removed = clean(directory)
        except OSError as exc:
            raise CommandError(f"Could not clean {directory}: {exc.strerror or exc}") from exc
        self.stdout.write(f"Removed {removed} metric file(s) from {directory}.")
