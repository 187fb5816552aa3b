"""``manage.py clients``: client → tenant bindings, per-client rate policies and tenants.

Changes take effect in this process at once (caches are cleared by signals); running servers
pick them up within ``MCPAUTH_CACHE_TTL`` seconds.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import Count

from audit.config import cli_actor, record_change
from mcpauth.conf import parse_rate
from mcpauth.management.commands.scopes import EPILOG, confirm, format_table, stdin_of
from mcpauth.models import ClientBinding, ClientPolicy, Tenant

ID_MAX_LENGTH = 255


def _check_id(value: str, what: str) -> str:
    if not value or not value.strip():
        raise CommandError(f"{what} must not be empty.")
    if value != value.strip() or any(ch.isspace() for ch in value):
        raise CommandError(f"{what} {value!r} must not contain whitespace.")
    if len(value) > ID_MAX_LENGTH:
        raise CommandError(f"{what} is longer than {ID_MAX_LENGTH} characters.")
    return value


def _tenant(external_id: str, hint: str = "") -> Tenant:
    tenant = Tenant.objects.filter(external_id=external_id).first()
    if tenant is None:
        raise CommandError(
            f"Unknown tenant {external_id!r}; see 'manage.py clients tenants'{hint}."
        )
    return tenant


def _audit(
    model: type[Any], action: str, target: str, changes: dict[str, Any], *, tenant: str = ""
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
    )


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
        "claim), set per-client rate-limit policies, and list/suspend tenants. " + EPILOG
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")

        p = sub.add_parser("list", help="Show every client with a binding or a policy.")
        p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

        p = sub.add_parser(
            "bind",
            help="Bind a client_id to a tenant.",
            description="Bind CLIENT_ID to TENANT: tokens of this client that carry no tenant "
            "claim act in TENANT. Moving an existing binding to another tenant asks for "
            "confirmation (--yes skips it). " + EPILOG,
        )
        p.add_argument("client_id", metavar="CLIENT_ID", help="The OAuth client_id.")
        p.add_argument("tenant", metavar="TENANT", help="The tenant's external id.")
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
        p.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

        p = sub.add_parser(
            "policy",
            help="Set a client's rate-limit policy.",
            description="Override the default rate limit for CLIENT_ID. " + EPILOG,
        )
        p.add_argument("client_id", metavar="CLIENT_ID", help="The OAuth client_id.")
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
            self._suspend(options["tenant"], suspended=action == "suspend")
        else:  # pragma: no cover - argparse restricts the choices
            raise CommandError(f"Unknown action {action!r}.")

    def _list(self, *, as_json: bool) -> None:
        bindings = {
            b.client_id: b.tenant.external_id
            for b in ClientBinding.objects.select_related("tenant")
        }
        policies = {p.client_id: p for p in ClientPolicy.objects.all()}
        clients = sorted(set(bindings) | set(policies))
        if as_json:
            data = [
                {
                    "client_id": c,
                    "tenant": bindings.get(c),
                    "policy": _policy_label(policies.get(c)),
                    "note": policies[c].note if c in policies else "",
                }
                for c in clients
            ]
            self.stdout.write(json.dumps(data, indent=2))
            return
        if not clients:
            self.stdout.write("No client bindings or policies.")
            return
        rows = [
            (
                c,
                bindings.get(c, "-"),
                _policy_label(policies.get(c)),
                policies[c].note if c in policies else "",
            )
            for c in clients
        ]
        self.stdout.write(format_table(("CLIENT_ID", "TENANT", "POLICY", "NOTE"), rows))

    def _bind(self, options: dict[str, Any]) -> None:
        client_id = _check_id(options["client_id"], "CLIENT_ID")
        external_id = _check_id(options["tenant"], "TENANT")
        with transaction.atomic():
            if options["create_tenant"]:
                tenant, created = Tenant.objects.get_or_create(
                    external_id=external_id, defaults={"name": external_id}
                )
                if created:
                    self.stdout.write(f"Created tenant {external_id}.")
            else:
                tenant = _tenant(external_id, ", or pass --create-tenant")
            binding = ClientBinding.objects.select_related("tenant").filter(client_id=client_id)
            existing = binding.first()
            if existing is not None and existing.tenant.pk == tenant.pk:
                self.stdout.write(f"No change: {client_id} is already bound to {external_id}.")
                return
            if existing is not None:
                old = existing.tenant.external_id
                confirm(
                    self,
                    stdin_of(options),
                    f"Move {client_id} from tenant {old!r} to {external_id!r}? Its tokens "
                    f"without a tenant claim will then act on {external_id!r}'s data.",
                    yes=options["yes"],
                )
                existing.tenant = tenant
                existing.save(update_fields=["tenant"])
                _audit(
                    ClientBinding,
                    "update",
                    client_id,
                    {"tenant": [old, external_id]},
                    tenant=external_id,
                )
                self.stdout.write(f"Moved {client_id} from tenant {old} to {external_id}.")
            else:
                ClientBinding.objects.create(client_id=client_id, tenant=tenant)
                _audit(
                    ClientBinding,
                    "create",
                    client_id,
                    {"tenant": [None, external_id]},
                    tenant=external_id,
                )
                self.stdout.write(f"Bound {client_id} to tenant {external_id}.")
        if tenant.suspended:
            self.stdout.write(f"Warning: tenant {external_id} is suspended.")

    def _unbind(self, options: dict[str, Any]) -> None:
        client_id = options["client_id"]
        binding = ClientBinding.objects.select_related("tenant").filter(client_id=client_id).first()
        if binding is None:
            raise CommandError(f"Client {client_id!r} has no tenant binding.")
        confirm(
            self,
            stdin_of(options),
            f"Unbind {client_id} from tenant {binding.tenant.external_id!r}? Its tokens without "
            "a tenant claim will be refused.",
            yes=options["yes"],
        )
        with transaction.atomic():
            binding.delete()
            old = binding.tenant.external_id
            _audit(ClientBinding, "delete", client_id, {"tenant": [old, None]}, tenant=old)
        self.stdout.write(f"Unbound {client_id} (was tenant {binding.tenant.external_id}).")

    def _policy(self, options: dict[str, Any]) -> None:
        client_id = _check_id(options["client_id"], "CLIENT_ID")
        note: str | None = options.get("note")
        if note is not None and len(note) > 255:
            raise CommandError("--note is longer than 255 characters.")
        existing = ClientPolicy.objects.filter(client_id=client_id).first()
        before = _policy_label(existing)
        if options["default"]:
            if existing is None:
                self.stdout.write(f"No change: {client_id} already uses the default policy.")
                return
            with transaction.atomic():
                existing.delete()
                _audit(ClientPolicy, "delete", client_id, _policy_changes(existing, None))
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
        policy = existing or ClientPolicy(client_id=client_id)
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
            _audit(ClientPolicy, "update" if existing else "create", client_id, changes)
        self.stdout.write(f"Policy for {client_id}: {_policy_label(policy)} (was {before}).")

    def _tenants(self, *, as_json: bool) -> None:
        tenants = (
            Tenant.objects.order_by("external_id")
            .values("external_id", "name", "suspended")
            .annotate(bound_clients=Count("client_bindings"))
        )
        if as_json:
            self.stdout.write(json.dumps(list(tenants), indent=2))
            return
        rows = [
            (
                t["external_id"],
                t["name"],
                "suspended" if t["suspended"] else "active",
                str(t["bound_clients"]),
            )
            for t in tenants
        ]
        if not rows:
            self.stdout.write("No tenants.")
            return
        self.stdout.write(format_table(("TENANT", "NAME", "STATUS", "BOUND_CLIENTS"), rows))

    def _suspend(self, external_id: str, *, suspended: bool) -> None:
        tenant = _tenant(external_id)
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
                tenant=external_id,
            )
        self.stdout.write(f"Tenant {external_id} is now {state}.")
