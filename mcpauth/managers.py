"""Tenant confinement for app models: querysets that cannot leave the caller's tenant.

:class:`~mcpauth.models.TenantOwned` gives a model a ``tenant`` and two managers:

* ``objects`` (:class:`TenantManager`) refuses to build a query without a principal. Every
  queryset comes from ``Model.objects.for_principal(principal)`` (services, which receive the
  ``Principal``) or ``Model.objects.current()`` (the caller of the running tool), and is
  filtered to that principal's tenant; ``create()``/``bulk_create()``/``get_or_create()`` on it
  stamp the tenant, and ``update()``/``update_or_create()`` (and their async forms) refuse to
  set another one. Forgetting the principal raises
  :class:`~mcpauth.exceptions.NoPrincipal` instead of reading every tenant's rows:
  ``Model.objects.filter(...)``, ``.all()``, ``.get()``, ``.create()`` all raise.
* ``all_tenants``, a plain manager and the model's default manager, for what is legitimately
  cross-tenant: the admin, management commands, migrations, related-object access.

Querysets stay ordinary Django querysets (async methods included), so domain code is plain
ORM code. For a hot path, :meth:`TenantManager.prepare` (and ``prepare_update`` /
``prepare_delete``) compiles a confined queryset once and re-runs it for any principal
(``mcpauth.prepared``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import models
from django.db.models import QuerySet

from mcpauth.exceptions import NoPrincipal
from mcpauth.prepared import (
    Param,
    Params,
    PreparedDelete,
    PreparedInsert,
    PreparedQuery,
    PreparedUpdate,
)

if TYPE_CHECKING:
    from mcpauth.tokens import Principal

M = TypeVar("M", bound=models.Model)

_TENANT_FIELDS = ("tenant", "tenant_id")


def _tenant_id(principal: Principal | None) -> int:
    tenant = getattr(principal, "tenant", None)
    tenant_id = getattr(tenant, "id", None)
    if not isinstance(tenant_id, int) or isinstance(tenant_id, bool):
        raise NoPrincipal("A tenant-confined query needs the caller's Principal.")
    return tenant_id


class TenantQuerySet(models.QuerySet[M]):
    """A queryset confined to one tenant (built by :meth:`TenantManager.for_principal`)."""

    _tenant_id: int | None = None

    def _clone(self) -> TenantQuerySet[M]:
        clone: TenantQuerySet[M] = super()._clone()  # type: ignore[misc]
        clone._tenant_id = self._tenant_id
        return clone

    def _confined(self) -> int:
        if self._tenant_id is None:
            raise NoPrincipal("A tenant-confined query needs the caller's Principal.")
        return self._tenant_id

    def _refuse_other_tenant(self, values: dict[str, Any] | None) -> int:
        """The confined tenant; raises when ``values`` would set the row's tenant to another."""
        tenant_id = self._confined()
        for key in _TENANT_FIELDS:
            if values and key in values:
                given = values[key]
                if getattr(given, "pk", given) != tenant_id:  # another tenant, an F(), None ...
                    raise NoPrincipal(
                        "A tenant-confined queryset cannot write another tenant's row."
                    )
        return tenant_id

    def _stamp(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        tenant_id = self._refuse_other_tenant(kwargs)
        for key in _TENANT_FIELDS:
            kwargs.pop(key, None)
        kwargs["tenant_id"] = tenant_id
        return kwargs

    def update(self, **kwargs: Any) -> int:
        # aupdate() runs this too (Django: sync_to_async(self.update))
        self._refuse_other_tenant(kwargs)
        return super().update(**kwargs)

    def update_or_create(
        self,
        defaults: Any = None,
        create_defaults: Any = None,
        **kwargs: Any,
    ) -> tuple[M, bool]:
        # aupdate_or_create() runs this too; the create half goes through create() above
        for values in (defaults, create_defaults, kwargs):
            if isinstance(values, dict):
                self._refuse_other_tenant(values)
        return super().update_or_create(defaults, create_defaults, **kwargs)

    def create(self, **kwargs: Any) -> M:
        return super().create(**self._stamp(kwargs))

    async def acreate(self, **kwargs: Any) -> M:
        return await super().acreate(**self._stamp(kwargs))

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        tenant_id = self._confined()
        objs = list(objs)
        for obj in objs:
            if getattr(obj, "tenant_id", None) not in (None, tenant_id):
                raise NoPrincipal("A tenant-confined queryset cannot write another tenant's row.")
            obj.tenant_id = tenant_id  # type: ignore[attr-defined]
        return super().bulk_create(objs, *args, **kwargs)


class TenantManager(models.Manager[M]):
    """``Model.objects``: every query starts from a principal (see the module docstring)."""

    def get_queryset(self) -> models.QuerySet[M]:
        raise NoPrincipal(
            f"{self.model.__name__}.objects is tenant-confined: use "
            f"{self.model.__name__}.objects.for_principal(principal) or .current(), or "
            f"{self.model.__name__}.all_tenants for cross-tenant code (admin, commands)."
        )

    def for_principal(self, principal: Principal) -> TenantQuerySet[M]:
        """The rows of ``principal``'s tenant."""
        tenant_id = _tenant_id(principal)
        hints = getattr(self, "_hints", None)
        qs: TenantQuerySet[M] = TenantQuerySet(self.model, using=self._db, hints=hints)
        qs._tenant_id = tenant_id
        return qs.filter(tenant_id=tenant_id)

    def _confined_template(self) -> TenantQuerySet[M]:
        """The tenant filter with the tenant as a run-time parameter (for prepared queries)."""
        hints = getattr(self, "_hints", None)
        qs: TenantQuerySet[M] = TenantQuerySet(self.model, using=self._db, hints=hints)
        return qs.filter(tenant_id=Param("tenant_id"))

    def prepare(
        self, build: Callable[[TenantQuerySet[M], Params], QuerySet[Any]]
    ) -> TenantStatement:
        """A prepared ``values()`` query: ``build(tenant_rows, p)`` returns the queryset."""
        return TenantStatement(
            PreparedQuery(self.model, lambda p: build(self._confined_template(), p))
        )

    def prepare_update(
        self, build: Callable[[TenantQuerySet[M], Params], QuerySet[Any]], fields: Iterable[str]
    ) -> TenantStatement:
        """A prepared ``UPDATE`` of ``fields`` (their values are run-time parameters)."""
        fields = tuple(fields)
        if set(fields) & set(_TENANT_FIELDS):
            raise ValueError("A tenant-confined UPDATE cannot set the tenant.")
        return TenantStatement(
            PreparedUpdate(self.model, lambda p: build(self._confined_template(), p), fields)
        )

    def prepare_delete(
        self, build: Callable[[TenantQuerySet[M], Params], QuerySet[Any]]
    ) -> TenantStatement:
        """A prepared raw ``DELETE`` (refused for models with delete signals or cascades)."""
        return TenantStatement(
            PreparedDelete(self.model, lambda p: build(self._confined_template(), p))
        )

    def prepare_insert(self) -> TenantStatement:
        """A prepared one-row ``INSERT`` (the tenant comes from the principal at every run)."""
        return TenantStatement(PreparedInsert(self.model))

    def current(self) -> TenantQuerySet[M]:
        """The rows of the running tool's caller (``current_principal()``)."""
        from mcpauth.context import current_principal

        return self.for_principal(current_principal())


class TenantStatement:
    """A prepared statement of a tenant-owned model: every run needs the caller's principal."""

    def __init__(self, prepared: PreparedQuery) -> None:
        self.prepared = prepared

    def rows(self, principal: Principal, **values: Any) -> list[dict[str, Any]]:
        return self.prepared.rows(tenant_id=_tenant_id(principal), **values)

    def first(self, principal: Principal, **values: Any) -> dict[str, Any] | None:
        return self.prepared.first(tenant_id=_tenant_id(principal), **values)

    def run(self, principal: Principal, **values: Any) -> int:
        """Execute the ``UPDATE``/``DELETE``/``INSERT``; the number of rows it changed."""
        return self.prepared.run(tenant_id=_tenant_id(principal), **values)

    def insert(self, principal: Principal, **values: Any) -> dict[str, Any]:
        """Insert one row (a prepared ``INSERT``); the values it was written with."""
        prepared = self.prepared
        if not isinstance(prepared, PreparedInsert):
            raise TypeError("insert() runs a statement made by prepare_insert()")
        row = prepared.values_for({**values, "tenant_id": _tenant_id(principal)})
        prepared.run(**row)
        return row
