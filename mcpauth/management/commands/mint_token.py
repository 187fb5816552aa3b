from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mcpauth.conf import get_settings
from mcpauth.identity import devissuer


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # the token must be the only output (scripts use it)
    help = (
        "Print a development access token for /mcp, signed by the built-in development issuer. "
        "Only works with DEBUG on and no real issuer configured."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--client-id", required=True, help="OAuth client id (rate-limit key).")
        parser.add_argument("--tenant", help="Tenant id, put in the tenant claim.")
        parser.add_argument(
            "--scopes", default="todo:read todo:write", help='Space-separated, e.g. "todo:read".'
        )
        parser.add_argument("--subject", help="Token subject (default: the client id).")
        parser.add_argument("--ttl", type=int, default=3600, help="Lifetime in seconds.")

    def handle(self, *args: Any, **options: Any) -> None:
        conf = get_settings()
        if conf.preset != "dev":
            raise CommandError(
                "The development issuer is disabled: it needs DEBUG=1 and no SCALEKIT_* or "
                f"MCPAUTH_ISSUER configured (current preset: {conf.preset}). Get tokens from your "
                "identity provider instead."
            )
        if options["ttl"] <= 0 or options["ttl"] > 30 * 86400:
            raise CommandError("--ttl must be between 1 and 2592000 seconds.")
        client_id = options["client_id"].strip()
        if not client_id:
            raise CommandError("--client-id must not be empty.")
        token = devissuer.mint(
            client_id=client_id,
            scopes=" ".join(options["scopes"].split()),
            tenant=options["tenant"],
            subject=options["subject"],
            ttl=options["ttl"],
        )
        self.stdout.write(token)
