"""Tenants, the scope→permission map, client→tenant bindings and per-client policies.

Tenants, bindings, policies and tenant aliases are namespaced by issuer: the same tenant claim
or ``client_id`` from two identity providers names two different things, unless an operator
joins them (:class:`TenantAlias`, or a binding to another issuer's tenant). Created without an
issuer, they belong to the first configured one (:func:`default_issuer`).

:class:`TenantOwned` is the abstract base for app models whose rows belong to one tenant.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.signals import class_prepared
from django.dispatch import receiver

from mcpauth.caching import revocation
from mcpauth.conf import get_settings, parse_rate
from mcpauth.exceptions import CrossTenantAccess
from mcpauth.managers import (
    ScopedManager,
    TenantManager,
    related_in_tenant,
    tenant_dependents,
    tenant_relations,
)
from mcpauth.tenant_scope import active_tenant

ISSUER_HELP = "The identity provider (its iss) whose tokens name this; its namespace."


def default_issuer() -> str:
    """The first configured issuer: what a tenant, binding, policy or alias created without
    naming one belongs to (the only issuer of a single-issuer deployment)."""
    return get_settings().default_issuer


def issuer_field(**kwargs: Any) -> models.CharField[str, str]:
    return models.CharField(max_length=255, default=default_issuer, help_text=ISSUER_HELP, **kwargs)


class ConfigQuerySet(models.QuerySet[Any]):
    """Bulk writes to configuration rows announce themselves like ``save()`` (``revocation``)."""

    def update(self, **kwargs: Any) -> int:
        rows = super().update(**kwargs)
        revocation.changed()
        return rows

    def delete(self) -> tuple[int, dict[str, int]]:
        result = super().delete()
        revocation.changed()
        return result

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> int:
        rows = super().bulk_update(objs, fields, batch_size=batch_size)
        revocation.changed()
        return rows

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list[Any]:
        made = super().bulk_create(objs, *args, **kwargs)
        revocation.changed()
        return made


ConfigManager = models.Manager.from_queryset(ConfigQuerySet)


class Tenant(models.Model):
    """One customer organisation of one issuer. ``external_id`` is that issuer's id for it (e.g.
    Scalekit ``oid``): ``(issuer, external_id)`` is unique, and the same claim value from another
    issuer is another tenant unless a :class:`TenantAlias` maps it here.

    ``issuer`` and ``external_id`` cannot change once audit rows name the tenant: they would no
    longer point at it.
    """

    issuer = issuer_field()
    external_id = models.CharField(max_length=255)
    name = models.CharField(max_length=255, blank=True)
    suspended = models.BooleanField(
        default=False, help_text="A suspended tenant gets 403 on every MCP call."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ConfigManager()

    class Meta:
        ordering = ["external_id", "issuer"]
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "external_id"], name="mcpauth_tenant_issuer_external_id"
            )
        ]

    def __str__(self) -> str:
        return self.name or self.external_id

    @property
    def label(self) -> str:
        """``external_id`` with its issuer, for lists that mix issuers."""
        return f"{self.external_id} ({self.issuer or 'no issuer'})"

    def audit_issuers(self) -> list[str]:
        """The issuers whose audit rows naming this tenant's external id are its rows: its own,
        those that reach it through an alias or a binding, and "" (rows written before issuers
        were recorded)."""
        issuers = {self.issuer, ""}
        if self.pk is not None:  # .all(): served by prefetch_related when the caller used it
            issuers.update(alias.issuer for alias in self.aliases.all())
            issuers.update(binding.issuer for binding in self.client_bindings.all())
        return sorted(issuers)

    def audit_rows(self) -> Q:
        """The audit rows of calls in this tenant (see :meth:`audit_issuers`)."""
        return Q(tenant=self.external_id, issuer__in=self.audit_issuers())

    def has_audit_rows(self, external_id: str | None = None) -> bool:
        from audit.models import AuditEvent  # audit imports nothing from here at import time

        # any issuer: whichever rows name this external id keep it (and its issuer) fixed
        return AuditEvent.objects.filter(tenant=external_id or self.external_id).exists()

    def clean(self) -> None:
        if TenantAlias.objects.filter(issuer=self.issuer, external_id=self.external_id).exists():
            raise ValidationError(
                {
                    "external_id": "This issuer's tenant claim value is an alias of another "
                    "tenant; remove the alias first."
                }
            )
        if self.pk is None:
            return
        stored = Tenant.objects.filter(pk=self.pk).values("issuer", "external_id").first()
        if (
            stored is not None
            and (stored["issuer"], stored["external_id"]) != (self.issuer, self.external_id)
            and self.has_audit_rows(stored["external_id"])
        ):
            raise ValidationError(
                {
                    "external_id": "This tenant's issuer and external id are named by audit "
                    "rows and can no longer change. Create a new tenant instead."
                }
            )


class TenantAlias(models.Model):
    """An operator's explicit mapping: tokens of ``issuer`` whose tenant claim is
    ``external_id`` act in ``tenant`` (typically one organisation known to two issuers).

    Without an alias, that claim value is a tenant of its own. An alias cannot shadow a tenant
    that issuer already has under that claim value (:meth:`clean`).
    """

    issuer = issuer_field()
    external_id = models.CharField(
        max_length=255, help_text="The tenant claim value, as this issuer's tokens carry it."
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="aliases")
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ConfigManager()

    class Meta:
        ordering = ["issuer", "external_id"]
        verbose_name_plural = "tenant aliases"
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "external_id"], name="mcpauth_tenantalias_issuer_external_id"
            )
        ]

    def __str__(self) -> str:
        return f"{self.external_id} ({self.issuer}) → {self.tenant_label}"

    @property
    def tenant_label(self) -> str:
        return self.tenant.label if self.tenant_id else "?"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.issuer and not get_settings().issuer_for(self.issuer):
            stored = (
                TenantAlias.objects.filter(pk=self.pk).values_list("issuer", flat=True).first()
                if self.pk is not None
                else None
            )
            if stored != self.issuer:  # an alias kept from an earlier configuration may stay
                errors["issuer"] = f"{self.issuer!r} is not a configured issuer."
        if not self.external_id or self.external_id != self.external_id.strip():
            errors["external_id"] = "The claim value must not be empty or padded with spaces."
        shadowed = Tenant.objects.filter(issuer=self.issuer, external_id=self.external_id)
        if self.external_id and shadowed.exists():
            errors["external_id"] = (
                f"This issuer already has its own tenant {self.external_id!r}: an alias cannot "
                "shadow it (its data would become unreachable). Suspend or delete that tenant "
                "first, or bind it differently."
            )
        if errors:
            raise ValidationError(errors)


#: RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
SCOPE_MAX_LENGTH = 200


def scope_problem(scope: object) -> str | None:
    """Why ``scope`` cannot be a mapping's scope, or ``None`` when it is fine.

    The one rule for every entry point: :meth:`ScopeMapping.clean` (the admin, the commands)
    and the ``scopes import`` document check.
    """
    if not isinstance(scope, str):
        return "a scope must be a string"
    if not scope:
        return "a scope must not be empty"
    if any(ch.isspace() for ch in scope):
        return f"scope {scope!r} contains whitespace"
    if len(scope) > SCOPE_MAX_LENGTH:
        return f"scope {scope[:40]!r}... is longer than {SCOPE_MAX_LENGTH} characters"
    if not _SCOPE_TOKEN_RE.fullmatch(scope):
        return (
            f"scope {scope!r} may only contain printable ASCII without quotes or backslashes "
            "(RFC 6749 scope-token)"
        )
    if "*" in scope[:-1]:
        return f"scope {scope!r}: '*' is only allowed as the last character"
    if scope == "*":
        return "a bare '*' would match every token scope; use a prefix such as 'todo:*'"
    return None


class ScopeMapping(models.Model):
    """An OAuth scope and the Django permissions it grants.

    ``scope`` may end in ``*`` to match a family: ``todo:*`` grants to ``todo:read`` and
    ``todo:write``; ``mcp:tools:*`` to ``mcp:tools:todos`` and so on. A bare ``*`` (every token
    scope) is refused by :meth:`clean`, which the admin and the ``scopes`` command both call.
    """

    scope = models.CharField(max_length=SCOPE_MAX_LENGTH, unique=True)
    description = models.CharField(max_length=255, blank=True)
    permissions = models.ManyToManyField(Permission, blank=True, related_name="+")

    objects = ConfigManager()

    class Meta:
        ordering = ["scope"]

    def __str__(self) -> str:
        return self.scope

    def clean(self) -> None:
        problem = scope_problem(self.scope)
        if problem:
            raise ValidationError({"scope": problem[0].upper() + problem[1:] + "."})


class ClientBinding(models.Model):
    """Tenant for a machine client of ``issuer`` whose tokens carry no tenant claim.

    ``(issuer, client_id)`` is unique: another issuer's client with the same id is unbound. The
    tenant is usually the issuer's own; binding to another issuer's tenant is an explicit
    operator mapping, like a :class:`TenantAlias`.
    """

    issuer = issuer_field()
    client_id = models.CharField(max_length=255)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="client_bindings")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ConfigManager()

    class Meta:
        ordering = ["client_id", "issuer"]
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "client_id"], name="mcpauth_clientbinding_issuer_client_id"
            )
        ]

    def __str__(self) -> str:
        return f"{self.client_id} → {self.tenant}"


class ClientPolicy(models.Model):
    """Per-client override of the default rate limit, for ``client_id`` of ``issuer`` only
    (another issuer's client with the same id keeps the defaults)."""

    class Mode(models.TextChoices):
        CUSTOM = "custom", "custom rate"
        UNLIMITED = "unlimited", "unlimited"
        BLOCKED = "blocked", "blocked (403 on every call)"

    issuer = issuer_field()
    client_id = models.CharField(max_length=255)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.CUSTOM)
    rate = models.CharField(
        max_length=32, blank=True, help_text="For custom: N/s, N/m, N/h or N/d, e.g. 600/m."
    )
    note = models.CharField(max_length=255, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConfigManager()

    class Meta:
        ordering = ["client_id", "issuer"]
        verbose_name_plural = "client policies"
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "client_id"], name="mcpauth_clientpolicy_issuer_client_id"
            )
        ]

    def __str__(self) -> str:
        return f"{self.client_id}: {self.mode}"

    def clean(self) -> None:
        if self.mode == self.Mode.CUSTOM:
            try:
                parse_rate(self.rate)
            except ValueError as exc:
                raise ValidationError({"rate": str(exc)}) from exc


class TenantOwned(models.Model):
    """Abstract base for a model whose rows belong to one tenant (see ``mcpauth.managers``).

    ``Model.objects.for_principal(p)`` / ``.current()`` are the tenant's rows and nothing else;
    ``Model.objects`` without a principal raises ``NoPrincipal``. ``Model.all_tenants`` is the
    default and base manager: every tenant's rows for the admin and commands, only the body's
    tenant's inside a governed call. A subclass with its own ``Meta`` should extend
    ``TenantOwned.Meta``.

    Inside a governed call an instance cannot be saved into, moved to or pointed at another
    tenant, nor deleted when it is not the caller's (:class:`CrossTenantAccess`); a new
    instance without a tenant gets the caller's. :meth:`clean` (admin, commands) refuses
    relations to another tenant's rows. On PostgreSQL the database enforces the same
    (``mcpauth.rls``).
    """

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="%(app_label)s_%(class)s_set"
    )
    #: Marks tenant-owned models for ``mcpauth.managers`` and ``mcpauth.rls``.
    mcpauth_tenant_owned = True

    # all_tenants first: the default manager (admin, dumpdata, related objects) is unconfined
    # outside governed calls.
    all_tenants = ScopedManager()
    objects = TenantManager()  # type: ignore[var-annotated]

    class Meta:
        abstract = True
        default_manager_name = "all_tenants"

    def save(self, *args: Any, **kwargs: Any) -> None:
        scope = active_tenant()
        if scope is not None:
            if self.tenant_id is None:
                self.tenant_id = scope
            elif self.tenant_id != scope:
                raise CrossTenantAccess("This object belongs to another tenant.")
            for field in tenant_relations(type(self)):
                if not self._relation_in_tenant(field, scope):
                    raise CrossTenantAccess(
                        f"{field.name}: no such {field.related_model._meta.verbose_name} in "
                        "your tenant."
                    )
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        scope = active_tenant()
        if scope is not None:
            if self.tenant_id not in (None, scope):
                raise CrossTenantAccess("This object belongs to another tenant.")
            if not type(self).all_tenants.filter(pk=self.pk).exists():
                raise self.DoesNotExist(f"{self._meta.object_name} matching query does not exist.")
        return super().delete(*args, **kwargs)

    def _relation_in_tenant(self, field: models.ForeignKey, tenant_id: int | None) -> bool:
        if field.is_cached(self):
            related = field.get_cached_value(self)
            if related is not None and getattr(related, "tenant_id", None) == tenant_id:
                return True
        return related_in_tenant(field, getattr(self, field.attname), tenant_id)

    def _do_update(  # type: ignore[override]  # (django-stubs and Django 5.2 disagree on it)
        self, base_qs: Any, using: Any, pk_val: Any, *args: Any, **kwargs: Any
    ) -> bool:
        updated = bool(super()._do_update(base_qs, using, pk_val, *args, **kwargs))
        if not updated and not self._state.adding and active_tenant() is not None:
            # Django would INSERT a row with this primary key: inside a governed call that is
            # an object of another tenant (or one deleted meanwhile), never a new row.
            raise CrossTenantAccess("This object does not exist in your tenant.")
        return updated

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        for field in tenant_relations(type(self)):
            if not self._relation_in_tenant(field, self.tenant_id):
                errors[field.name] = (
                    f"This {field.related_model._meta.verbose_name} belongs to another tenant."
                )
        if self.pk is not None and self.tenant_id is not None:
            stored = type(self)._base_manager.filter(pk=self.pk).values_list("tenant_id", flat=True)
            before = stored.first()
            if before is not None and before != self.tenant_id:
                for rel in tenant_dependents(type(self)):
                    if rel.related_model._base_manager.filter(**{rel.field.name: self}).exists():
                        errors["tenant"] = (
                            f"Rows of {rel.related_model._meta.verbose_name_plural} refer to "
                            "this object in its current tenant; move or delete them first."
                        )
                        break
        if errors:
            raise ValidationError(errors)


@receiver(class_prepared, dispatch_uid="mcpauth-tenant-owned-managers")
def _confine_django_paths(sender: type[models.Model], **_: Any) -> None:
    """Every ``TenantOwned`` model's default and base manager is ``all_tenants``.

    Set on the class, not through ``Meta``, so a subclass whose ``Meta`` forgets to extend
    ``TenantOwned.Meta`` still gets them (related objects, ``save()``'s ``UPDATE``, the deletion
    collector use the base manager), and no app needs a migration for it.
    """
    if issubclass(sender, TenantOwned) and not sender._meta.abstract:
        sender._meta.default_manager_name = "all_tenants"
        sender._meta.base_manager_name = "all_tenants"


# The stored downstream secrets (mcpauth.downstream), in their own module.
from mcpauth.downstream.models import DownstreamSecret  # noqa: E402, F401
