"""What the management commands share: confirmation, tables, and the issuer an option names.

Commands stay thin: the work is in service modules (:mod:`mcpauth.identity.scopemap`, the models'
``clean()``), and the command parses, asks, calls and prints. These helpers raise
``CommandError`` with a message meant for the operator.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError

from mcpauth.conf import get_settings
from mcpauth.models import Tenant

EPILOG = (
    "Changes apply to this process at once; running servers pick them up within "
    "MCPAUTH_CACHE_TTL seconds."
)
ID_MAX_LENGTH = 255


def confirm(command: BaseCommand, stdin: TextIO, question: str, *, yes: bool) -> None:
    """Return when the operator agreed (``--yes`` or "y" on a terminal); else CommandError."""
    if yes:
        return
    if not stdin.isatty():
        raise CommandError(f"{question} Refusing without --yes (stdin is not a terminal).")
    command.stdout.write(f"{question} [y/N] ", ending="")
    command.stdout.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("Aborted; nothing changed.")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def stdin_of(options: dict[str, Any]) -> TextIO:
    """The command's stdin (the ``stdin`` stealth option in tests), else ``sys.stdin``."""
    stdin: TextIO | None = options.get("stdin")
    return stdin if stdin is not None else sys.stdin


def check_id(value: str, what: str) -> str:
    if not value or not value.strip():
        raise CommandError(f"{what} must not be empty.")
    if value != value.strip() or any(ch.isspace() for ch in value):
        raise CommandError(f"{what} {value!r} must not contain whitespace.")
    if len(value) > ID_MAX_LENGTH:
        raise CommandError(f"{what} is longer than {ID_MAX_LENGTH} characters.")
    return value


def add_issuer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--issuer",
        help="The issuer (its iss) the client or tenant belongs to; optional when exactly one "
        "issuer is configured.",
    )


def issuer_of(options: dict[str, Any], key: str = "issuer", *, known_only: bool = True) -> str:
    """The issuer ``options[key]`` names, else the only configured one.

    ``known_only``: the issuer must be configured (what new rows are made for); removals and
    look-ups also accept an issuer no longer configured.
    """
    configured = [cfg.issuer for cfg in get_settings().issuer_configs]
    value = options.get(key)
    flag = "--" + key.replace("_", "-")
    if value:
        if known_only and value not in configured:
            listed = ", ".join(configured) or "none"
            raise CommandError(
                f"{flag} {value!r} is not a configured issuer (configured: {listed})."
            )
        return str(value)
    if len(configured) == 1:
        return configured[0]
    if not configured:
        raise CommandError(f"No issuer is configured: pass {flag}.")
    raise CommandError(
        f"Several issuers are configured ({', '.join(configured)}): pass {flag} to say which."
    )


def tenant_of(external_id: str, issuer: str, hint: str = "") -> Tenant:
    tenant = Tenant.objects.filter(issuer=issuer, external_id=external_id).first()
    if tenant is None:
        raise CommandError(
            f"Unknown tenant {external_id!r} (issuer {issuer}); see 'manage.py clients "
            f"tenants'{hint}."
        )
    return tenant
