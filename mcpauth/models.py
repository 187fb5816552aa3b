"""Tenants, the scope→permission map, client→tenant bindings and per-client policies.

:class:`TenantOwned` is the abstract base for app models whose rows belong to one tenant.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.db import models

from mcpauth import revocation
from mcpauth.conf import parse_rate
from mcpauth.managers import TenantManager


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
    """One customer organisation. ``external_id`` is the IdP's id (e.g. Scalekit ``oid``)."""

    external_id = models.CharField(max_length=255, unique=True)
    name = models.CharField(max_length=255, blank=True)
    suspended = models.BooleanField(
        default=False, help_text="A suspended tenant gets 403 on every MCP call."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ConfigManager()

    class Meta:
        ordering = ["external_id"]

    def __str__(self) -> str:
        return self.name or self.external_id


class ScopeMapping(models.Model):
    """An OAuth scope and the Django permissions it grants.

    ``scope`` may end in ``*`` to match a family: ``todo:*`` grants to ``todo:read`` and
    ``todo:write``; ``mcp:tools:*`` to ``mcp:tools:todos`` and so on.
    """

    scope = models.CharField(max_length=200, unique=True)
    description = models.CharField(max_length=255, blank=True)
    permissions = models.ManyToManyField(Permission, blank=True, related_name="+")

    objects = ConfigManager()

    class Meta:
        ordering = ["scope"]

    def __str__(self) -> str:
        return self.scope


class ClientBinding(models.Model):
    """Tenant for a machine client whose tokens carry no tenant claim."""

    client_id = models.CharField(max_length=255, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="client_bindings")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ConfigManager()

    class Meta:
        ordering = ["client_id"]

    def __str__(self) -> str:
        return f"{self.client_id} → {self.tenant}"


class ClientPolicy(models.Model):
    """Per-client override of the default rate limit."""

    class Mode(models.TextChoices):
        CUSTOM = "custom", "custom rate"
        UNLIMITED = "unlimited", "unlimited"
        BLOCKED = "blocked", "blocked (403 on every call)"

    client_id = models.CharField(max_length=255, unique=True)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.CUSTOM)
    rate = models.CharField(
        max_length=32, blank=True, help_text="For custom: N/s, N/m, N/h or N/d, e.g. 600/m."
    )
    note = models.CharField(max_length=255, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConfigManager()

    class Meta:
        ordering = ["client_id"]
        verbose_name_plural = "client policies"

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
    unconfined default manager for the admin and commands. A subclass with its own ``Meta``
    should extend ``TenantOwned.Meta``.
    """

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="%(app_label)s_%(class)s_set"
    )

    # all_tenants first: the default manager (admin, dumpdata, related objects) is unconfined.
    all_tenants = models.Manager()
    objects = TenantManager()  # type: ignore[var-annotated]

    class Meta:
        abstract = True
        default_manager_name = "all_tenants"
