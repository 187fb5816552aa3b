"""``manage.py clients``: client → tenant bindings, per-client rate policies, tenants and
tenant aliases.

Clients, tenants and aliases belong to an issuer (``--issuer``; with one issuer configured it is
the default). Changes take effect in this process at once (caches are cleared by signals);
running servers pick them up within ``MCPAUTH_CACHE_TTL`` seconds.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import Count

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
from mcpauth.conf import parse_rate
from mcpauth.management.commands._issuers import (
    add_alias_parsers,
    handle_adopt,
    handle_alias,
    handle_aliases,
    handle_unalias,
)
from mcpauth.models import ClientBinding, ClientPolicy, Tenant


def _audit(
    model: type[Any],
    action: str,
    target: str,
    changes: dict[str, Any],
    *,
    issuer: str,
    tenant: str = "",
) -> None:
    """Audit a change (``config/<object>.<action>``, actor ``cli:<user>``), in its transaction."""
    client_id = target if model is not Tenant else ""
    record_change(
        model,
        action,
        target=target,
        actor=cli_actor(),
        changes=changes,
        tenant=tenant,
        client_id=client_id,
        issuer=issuer,
    )


def _tenant_label(tenant: Tenant, issuer: str) -> str:
    """The tenant's external id, with its issuer when that is not ``issuer``."""
    return tenant.external_id if tenant.issuer == issuer else tenant.label


def _policy_values(policy: ClientPolicy | None) -> dict[str, Any]:
    if policy is None:
        return {}
    return {"mode": str(policy.mode), "rate": policy.rate, "note": policy.note}


def _policy_changes(before: ClientPolicy | None, after: ClientPolicy | None) -> dict[str, Any]:
    old, new = _policy_values(before), _policy_values(after)
    return {k: [old.get(k), new.get(k)] for k in {**old, **new} if old.get(k) != new.get(k)}


def _policy_label(policy: ClientPolicy | None) -> str:
    if policy is None:
        return "default"
    if policy.mode == ClientPolicy.Mode.CUSTOM:
        return policy.rate or "default"
    return str(policy.mode)


class Command(BaseCommand):
    help = (
        "Manage machine clients: bind a client_id to a tenant (for tokens without a tenant "
        "claim), set per-client rate-limit policies, list/suspend tenants, and join another "
        "issuer's tenant claim to a tenant (alias). Clients and tenants belong to an issuer: "
        "--issuer names it (default: the only configured one). " + EPILOG
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")

        p = sub.add_parser("list", help="Show every client with a binding or a policy.")
        p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

        p = sub.add_parser(
            "bind",
            help="Bind a client_id to a tenant.",
            description="Bind CLIENT_ID (of --issuer) to TENANT (of --tenant-issuer, default "
            "the same issuer): tokens of this client that carry no tenant claim act in TENANT. "
            "Moving an existing binding to another tenant asks for confirmation (--yes skips "
            "it). " + EPILOG,
        )
        p.add_argument("client_id", metavar="CLIENT_ID", help="The OAuth client_id.")
        p.add_argument("tenant", metavar="TENANT", help="The tenant's external id.")
        add_issuer_argument(p)
        p.add_argument(
            "--tenant-issuer",
            help="The issuer TENANT belongs to, when it is another one (an explicit mapping).",
        )
        p.add_argument(
            "--create-tenant", action="store_true", help="Create TENANT when it does not exist."
        )
        p.add_argument(
            "--yes", action="store_true", help="Do not ask before moving an existing binding."
        )

        p = sub.add_parser(
            "unbind",
            help="Remove a client's tenant binding.",
            description="Remove CLIENT_ID's binding: its tokens without a tenant claim are then "
            "refused. Asks for confirmation (--yes skips it). " + EPILOG,
        )
        p.add_argument("client_id", metavar="CLIENT_ID", help="The OAuth client_id.")
        add_issuer_argument(p)
        p.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

        p = sub.add_parser(
            "policy",
            help="Set a client's rate-limit policy.",
            description="Override the default rate limit for CLIENT_ID of --issuer (another "
            "issuer's client with the same id is not affected). " + EPILOG,
        )
        p.add_argument("client_id", metavar="CLIENT_ID", help="The OAuth client_id.")
        add_issuer_argument(p)
        mode = p.add_mutually_exclusive_group(required=True)
        mode.add_argument("--rate", help="A custom rate: N/s, N/m, N/h or N/d, e.g. 600/m.")
        mode.add_argument("--unlimited", action="store_true", help="No rate limit.")
        mode.add_argument("--blocked", action="store_true", help="Refuse every call (403).")
        mode.add_argument(
            "--default", action="store_true", help="Remove the override (use the defaults)."
        )
        p.add_argument("--note", help="A note stored with the policy (why it was set).")

        p = sub.add_parser("tenants", help="Show every tenant.")
        p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

        for name, text in (
            ("suspend", "Suspend a tenant: every MCP call in it gets 403."),
            ("unsuspend", "Lift a tenant's suspension."),
        ):
            p = sub.add_parser(name, help=text, description=f"{text} {EPILOG}")
            p.add_argument("tenant", metavar="TENANT", help="The tenant's external id.")
            add_issuer_argument(p)

        add_alias_parsers(sub)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(as_json=options["json"])
        elif action == "bind":
            self._bind(options)
        elif action == "unbind":
            self._unbind(options)
        elif action == "policy":
            self._policy(options)
        elif action == "tenants":
            self._tenants(as_json=options["json"])
        elif action in ("suspend", "unsuspend"):
            self._suspend(options, suspended=action == "suspend")
        elif action == "alias":
            handle_alias(self, options)
        elif action == "unalias":
            handle_unalias(self, options)
        elif action == "aliases":
            handle_aliases(self, as_json=options["json"])
        elif action == "adopt":
            handle_adopt(self, options)
        else:  # pragma: no cover - argparse restricts the choices
            raise CommandError(f"Unknown action {action!r}.")

    def _list(self, *, as_json: bool) -> None:
        bindings = {
            (b.issuer, b.client_id): _tenant_label(b.tenant, b.issuer)
            for b in ClientBinding.objects.select_related("tenant")
        }
        policies = {(p.issuer, p.client_id): p for p in ClientPolicy.objects.all()}
        clients = sorted(set(bindings) | set(policies), key=lambda k: (k[1], k[0]))
        if as_json:
            data = [
                {
                    "client_id": c,
                    "issuer": i,
                    "tenant": bindings.get((i, c)),
                    "policy": _policy_label(policies.get((i, c))),
                    "note": policies[(i, c)].note if (i, c) in policies else "",
                }
                for i, c in clients
            ]
            self.stdout.write(json.dumps(data, indent=2))
            return
        if not clients:
            self.stdout.write("No client bindings or policies.")
            return
        rows = [
            (
                c,
                bindings.get((i, c), "-"),
                _policy_label(policies.get((i, c))),
                i,
                policies[(i, c)].note if (i, c) in policies else "",
            )
            for i, c in clients
        ]
        headers = ("CLIENT_ID", "TENANT", "POLICY", "ISSUER", "NOTE")
        self.stdout.write(format_table(headers, rows))

    def _bind(self, options: dict[str, Any]) -> None:
        client_id = check_id(options["client_id"], "CLIENT_ID")
        external_id = check_id(options["tenant"], "TENANT")
        issuer = issuer_of(options)
        tenant_issuer = issuer
        if options["tenant_issuer"]:
            tenant_issuer = issuer_of(options, "tenant_issuer", known_only=False)
        with transaction.atomic():
            if options["create_tenant"]:
                found = Tenant.objects.filter(issuer=tenant_issuer, external_id=external_id)
                tenant = found.first()
                if tenant is None:
                    tenant = Tenant(issuer=tenant_issuer, external_id=external_id, name=external_id)
                    try:
                        tenant.full_clean()
                    except ValidationError as exc:
                        raise CommandError(f"Invalid tenant: {'; '.join(exc.messages)}") from None
                    tenant.save()
                    self.stdout.write(f"Created tenant {external_id}.")
            else:
                tenant = tenant_of(external_id, tenant_issuer, ", or pass --create-tenant")
            label = _tenant_label(tenant, issuer)
            binding = ClientBinding.objects.select_related("tenant").filter(
                issuer=issuer, client_id=client_id
            )
            existing = binding.first()
            if existing is not None and existing.tenant.pk == tenant.pk:
                self.stdout.write(f"No change: {client_id} is already bound to {label}.")
                return
            if existing is not None:
                old = _tenant_label(existing.tenant, issuer)
                confirm(
                    self,
                    stdin_of(options),
                    f"Move {client_id} from tenant {old!r} to {label!r}? Its tokens "
                    f"without a tenant claim will then act on {label!r}'s data.",
                    yes=options["yes"],
                )
                existing.tenant = tenant
                existing.save(update_fields=["tenant"])
                _audit(
                    ClientBinding,
                    "update",
                    client_id,
                    {"tenant": [old, label]},
                    issuer=issuer,
                    tenant=external_id,
                )
                self.stdout.write(f"Moved {client_id} from tenant {old} to {label}.")
            else:
                ClientBinding.objects.create(issuer=issuer, client_id=client_id, tenant=tenant)
                _audit(
                    ClientBinding,
                    "create",
                    client_id,
                    {"tenant": [None, label]},
                    issuer=issuer,
                    tenant=external_id,
                )
                self.stdout.write(f"Bound {client_id} to tenant {label}.")
        if tenant.suspended:
            self.stdout.write(f"Warning: tenant {label} is suspended.")

    def _unbind(self, options: dict[str, Any]) -> None:
        client_id = options["client_id"]
        issuer = issuer_of(options, known_only=False)
        binding = (
            ClientBinding.objects.select_related("tenant")
            .filter(issuer=issuer, client_id=client_id)
            .first()
        )
        if binding is None:
            raise CommandError(f"Client {client_id!r} has no tenant binding.")
        old = _tenant_label(binding.tenant, issuer)
        confirm(
            self,
            stdin_of(options),
            f"Unbind {client_id} from tenant {old!r}? Its tokens without a tenant claim will be "
            "refused.",
            yes=options["yes"],
        )
        with transaction.atomic():
            binding.delete()
            _audit(
                ClientBinding,
                "delete",
                client_id,
                {"tenant": [old, None]},
                issuer=issuer,
                tenant=binding.tenant.external_id,
            )
        self.stdout.write(f"Unbound {client_id} (was tenant {old}).")

    def _policy(self, options: dict[str, Any]) -> None:
        client_id = check_id(options["client_id"], "CLIENT_ID")
        issuer = issuer_of(options, known_only=not options["default"])
        note: str | None = options.get("note")
        if note is not None and len(note) > 255:
            raise CommandError("--note is longer than 255 characters.")
        existing = ClientPolicy.objects.filter(issuer=issuer, client_id=client_id).first()
        before = _policy_label(existing)
        if options["default"]:
            if existing is None:
                self.stdout.write(f"No change: {client_id} already uses the default policy.")
                return
            with transaction.atomic():
                existing.delete()
                _audit(
                    ClientPolicy,
                    "delete",
                    client_id,
                    _policy_changes(existing, None),
                    issuer=issuer,
                )
            self.stdout.write(f"Policy for {client_id}: default (was {before}).")
            return
        rate = ""
        if options["unlimited"]:
            mode = ClientPolicy.Mode.UNLIMITED
        elif options["blocked"]:
            mode = ClientPolicy.Mode.BLOCKED
        else:
            mode = ClientPolicy.Mode.CUSTOM
            rate = (options["rate"] or "").strip()
            try:
                count, _seconds = parse_rate(rate)
            except ValueError as exc:
                raise CommandError(f"--rate: {exc}.") from None
            if count < 1:
                raise CommandError("--rate must allow at least one call; use --blocked instead.")
        if (
            existing is not None
            and existing.mode == mode
            and existing.rate == rate
            and (note is None or note == existing.note)
        ):
            self.stdout.write(f"No change: {client_id} already has policy {before}.")
            return
        old_values = _policy_values(existing)
        policy = existing or ClientPolicy(issuer=issuer, client_id=client_id)
        policy.mode = mode
        policy.rate = rate
        if note is not None:
            policy.note = note
        try:
            policy.full_clean()
        except ValidationError as exc:
            raise CommandError(f"Invalid policy: {'; '.join(exc.messages)}") from None
        with transaction.atomic():
            policy.save()
            changes = {
                k: [old_values.get(k), v]
                for k, v in _policy_values(policy).items()
                if old_values.get(k) != v
            }
            _audit(
                ClientPolicy, "update" if existing else "create", client_id, changes, issuer=issuer
            )
        self.stdout.write(f"Policy for {client_id}: {_policy_label(policy)} (was {before}).")

    def _tenants(self, *, as_json: bool) -> None:
        tenants = (
            Tenant.objects.order_by("external_id", "issuer")
            .values("external_id", "issuer", "name", "suspended")
            .annotate(
                bound_clients=Count("client_bindings", distinct=True),
                alias_count=Count("aliases", distinct=True),
            )
        )
        if as_json:
            data = [
                {**{k: v for k, v in t.items() if k != "alias_count"}, "aliases": t["alias_count"]}
                for t in tenants
            ]
            self.stdout.write(json.dumps(data, indent=2))
            return
        rows = [
            (
                t["external_id"],
                t["name"],
                "suspended" if t["suspended"] else "active",
                str(t["bound_clients"]),
                str(t["alias_count"]),
                t["issuer"] or "(none)",
            )
            for t in tenants
        ]
        if not rows:
            self.stdout.write("No tenants.")
            return
        headers = ("TENANT", "NAME", "STATUS", "BOUND_CLIENTS", "ALIASES", "ISSUER")
        self.stdout.write(format_table(headers, rows))

    def _suspend(self, options: dict[str, Any], *, suspended: bool) -> None:
        external_id = options["tenant"]
        issuer = issuer_of(options, known_only=False)
        tenant = tenant_of(external_id, issuer)
        state = "suspended" if suspended else "active"
        if tenant.suspended == suspended:
            self.stdout.write(f"No change: tenant {external_id} is already {state}.")
            return
        with transaction.atomic():
            tenant.suspended = suspended
            tenant.save(update_fields=["suspended"])
            _audit(
                Tenant,
                "suspend" if suspended else "unsuspend",
                external_id,
                {"suspended": [not suspended, suspended]},
                issuer=issuer,
                tenant=external_id,
            )
        self.stdout.write(f"Tenant {external_id} is now {state}.")
