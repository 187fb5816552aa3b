"""The ``clients`` command's issuer handling and its tenant-alias actions.

* ``--issuer``: the issuer a client, tenant or alias belongs to; optional when exactly one issuer
  is configured.
* ``clients alias CLAIM TENANT --issuer B [--tenant-issuer A]``: tokens of issuer B whose tenant
  claim is CLAIM act in tenant TENANT (of issuer A). ``clients unalias``, ``clients aliases``.
* ``clients adopt ISSUER``: tenants, bindings and policies without an issuer (migrated while
  none was configured) become ISSUER's.

Every change is validated by the model's ``clean()`` and audited as configuration
(``config/tenant_alias.create`` …) in its own transaction.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction

from audit.changes import cli_actor, record_change
from mcpauth.cli import (
    EPILOG,
    add_issuer_argument,
    check_id,
    confirm,
    format_table,
    issuer_of,
    stdin_of,
    tenant_of,
)
from mcpauth.models import ClientBinding, ClientPolicy, Tenant, TenantAlias


def add_alias_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "alias",
        help="Join another issuer's tenant claim value to a tenant.",
        description="Tokens of --issuer whose tenant claim is CLAIM act in TENANT (of "
        "--tenant-issuer, default the same issuer). Without an alias, the same claim value "
        "from two issuers is two tenants. Moving an existing alias asks for confirmation "
        "(--yes skips it). " + EPILOG,
    )
    p.add_argument("claim", metavar="CLAIM", help="The tenant claim value of --issuer's tokens.")
    p.add_argument("tenant", metavar="TENANT", help="The tenant's external id.")
    add_issuer_argument(p)
    p.add_argument("--tenant-issuer", help="The issuer TENANT belongs to.")
    p.add_argument("--note", default="", help="Why the two are one organisation.")
    p.add_argument("--yes", action="store_true", help="Do not ask before moving an alias.")

    p = sub.add_parser(
        "unalias",
        help="Remove a tenant alias.",
        description="Remove the alias of CLAIM (of --issuer): its tokens then get a tenant of "
        "their own (or 403 without auto-provisioning). Asks for confirmation (--yes skips "
        "it). " + EPILOG,
    )
    p.add_argument("claim", metavar="CLAIM", help="The aliased tenant claim value.")
    add_issuer_argument(p)
    p.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    p = sub.add_parser("aliases", help="Show every tenant alias.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    p = sub.add_parser(
        "adopt",
        help="Give tenants, bindings and policies without an issuer to ISSUER.",
        description="Rows migrated while no issuer was configured have none, and no token "
        "reaches them: assign them to ISSUER. Refuses when ISSUER already has a tenant, "
        "binding or policy with the same id. Asks for confirmation (--yes skips it). " + EPILOG,
    )
    p.add_argument("issuer", metavar="ISSUER", help="A configured issuer.")
    p.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")


def _audit_alias(alias: TenantAlias, action: str, changes: dict[str, Any]) -> None:
    record_change(
        TenantAlias,
        action,
        target=f"{alias.external_id} ({alias.issuer})",
        actor=cli_actor(),
        changes=changes,
        tenant=alias.tenant.external_id,
        issuer=alias.issuer,
    )


def handle_alias(command: BaseCommand, options: dict[str, Any]) -> None:
    claim = check_id(options["claim"], "CLAIM")
    external_id = check_id(options["tenant"], "TENANT")
    issuer = issuer_of(options)
    tenant_issuer = issuer
    if options["tenant_issuer"]:
        tenant_issuer = issuer_of(options, "tenant_issuer", known_only=False)
    note = options["note"] or ""
    tenant = tenant_of(external_id, tenant_issuer)
    with transaction.atomic():
        alias = (
            TenantAlias.objects.select_related("tenant")
            .filter(issuer=issuer, external_id=claim)
            .first()
        )
        old = alias.tenant.label if alias is not None else None
        if alias is not None and alias.tenant_id == tenant.pk and (note in ("", alias.note)):
            command.stdout.write(f"No change: {claim} ({issuer}) already leads to {tenant.label}.")
            return
        if alias is not None and alias.tenant_id != tenant.pk:
            confirm(
                command,
                stdin_of(options),
                f"Move alias {claim} ({issuer}) from tenant {old!r} to {tenant.label!r}? Its "
                f"tokens will then act on {tenant.label!r}'s data.",
                yes=options["yes"],
            )
        created = alias is None
        alias = alias or TenantAlias(issuer=issuer, external_id=claim)
        alias.tenant = tenant
        if note:
            alias.note = note
        try:
            alias.full_clean()
        except ValidationError as exc:
            raise CommandError(f"Invalid alias: {'; '.join(exc.messages)}") from None
        alias.save()
        _audit_alias(alias, "create" if created else "update", {"tenant": [old, tenant.label]})
    verb = "Aliased" if created else "Moved alias"
    command.stdout.write(f"{verb} {claim} ({issuer}) to tenant {tenant.label}.")


def handle_unalias(command: BaseCommand, options: dict[str, Any]) -> None:
    claim = options["claim"]
    issuer = issuer_of(options, known_only=False)
    alias = (
        TenantAlias.objects.select_related("tenant")
        .filter(issuer=issuer, external_id=claim)
        .first()
    )
    if alias is None:
        raise CommandError(f"{claim!r} ({issuer}) is not an alias.")
    confirm(
        command,
        stdin_of(options),
        f"Remove alias {claim} ({issuer}) → {alias.tenant.label}? Its tokens will get a tenant of "
        "their own.",
        yes=options["yes"],
    )
    with transaction.atomic():
        alias.delete()
        _audit_alias(alias, "delete", {"tenant": [alias.tenant.label, None]})
    command.stdout.write(f"Removed alias {claim} ({issuer}) (was tenant {alias.tenant.label}).")


def handle_aliases(command: BaseCommand, *, as_json: bool) -> None:
    aliases = TenantAlias.objects.select_related("tenant").order_by("external_id", "issuer")
    data = [
        {
            "claim": a.external_id,
            "issuer": a.issuer,
            "tenant": a.tenant.external_id,
            "tenant_issuer": a.tenant.issuer,
            "note": a.note,
        }
        for a in aliases
    ]
    if as_json:
        command.stdout.write(json.dumps(data, indent=2))
        return
    if not data:
        command.stdout.write("No tenant aliases.")
        return
    rows = [(d["claim"], d["issuer"], d["tenant"], d["tenant_issuer"], d["note"]) for d in data]
    headers = ("CLAIM", "ISSUER", "TENANT", "TENANT_ISSUER", "NOTE")
    command.stdout.write(format_table(headers, rows))


#: What ``adopt`` moves, with the field that must stay unique within an issuer.
_ADOPTED: tuple[tuple[type[models.Model], str], ...] = (
    (Tenant, "external_id"),
    (ClientBinding, "client_id"),
    (ClientPolicy, "client_id"),
)


def handle_adopt(command: BaseCommand, options: dict[str, Any]) -> None:
    issuer = issuer_of(options)
    orphans = {
        model: list(model._default_manager.filter(issuer=""))  # type: ignore[misc]
        for model, _ in _ADOPTED
    }
    total = sum(len(rows) for rows in orphans.values())
    if not total:
        command.stdout.write("No change: every tenant, binding and policy has an issuer.")
        return
    clashes = [
        f"{model._meta.verbose_name} {getattr(row, field)!r}"
        for model, field in _ADOPTED
        for row in orphans[model]
        if model._default_manager.filter(issuer=issuer, **{field: getattr(row, field)}).exists()
    ]
    if clashes:
        raise CommandError(
            f"{issuer} already has: {', '.join(clashes)}. Resolve these first; nothing changed."
        )
    confirm(
        command,
        stdin_of(options),
        f"Assign {total} tenant(s), binding(s) and policy(ies) without an issuer to {issuer}?",
        yes=options["yes"],
    )
    with transaction.atomic():
        for model, field in _ADOPTED:
            for row in orphans[model]:
                row.issuer = issuer  # type: ignore[attr-defined]
                row.save(update_fields=["issuer"])
                target = str(getattr(row, field))
                record_change(
                    model,
                    "adopt",
                    target=target,
                    actor=cli_actor(),
                    changes={"issuer": ["", issuer]},
                    tenant=target if model is Tenant else "",
                    client_id=target if model is not Tenant else "",
                    issuer=issuer,
                )
    command.stdout.write(f"Assigned {total} row(s) to issuer {issuer}.")
