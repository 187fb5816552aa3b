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
* ``all_tenants`` (:class:`ScopedManager`), the model's default and base manager, for what is
  legitimately cross-tenant: the admin, management commands, migrations. While a governed body
  runs (``mcpauth.tenant_scope``) it, and so every related-object access, prefetch,
  ``get_object_or_404`` and ``raw()`` built on it, sees only the body's tenant: on PostgreSQL
  the database enforces the same (``mcpauth.rls``), this is the ORM's second line and the only
  one on SQLite.

Querysets stay ordinary Django querysets (async methods included), so domain code is plain
ORM code. For a hot path, :meth:`TenantManager.prepare` (and ``prepare_update`` /
``prepare_delete``) compiles a confined queryset once and re-runs it for any principal
(``mcpauth.prepared``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import models
from django.db.models import QuerySet

from mcpauth.exceptions import CrossTenantAccess, NoPrincipal
from mcpauth.prepared import (
    Param,
    Params,
    PreparedDelete,
    PreparedInsert,
    PreparedQuery,
    PreparedUpdate,
    Values,
)
from mcpauth.tenant_scope import active_tenant

if TYPE_CHECKING:
    from mcpauth.values import Principal

M = TypeVar("M", bound=models.Model)

_TENANT_FIELDS = ("tenant", "tenant_id")


def _tenant_id(principal: Principal | None) -> int:
    tenant = getattr(principal, "tenant", None)
    tenant_id = getattr(tenant, "id", None)
    if not isinstance(tenant_id, int) or isinstance(tenant_id, bool):
        raise NoPrincipal("A tenant-confined query needs the caller's Principal.")
    scope = active_tenant()
    if scope is not None and scope != tenant_id:
        raise CrossTenantAccess("A governed call cannot query another tenant's rows.")
    return tenant_id


_RAW_TENANT_PARAM = "mcpauth_tenant_id"


def confine_raw(model: type[models.Model], raw_query: str, params: Any, tenant_id: int) -> Any:
    """``(sql, params)`` of a ``raw()`` query wrapped to return only ``tenant_id``'s rows.

    The query must select the model's tenant column (``SELECT *`` does); the database refuses
    it otherwise, which is the point: a confined ``raw()`` never returns unchecked rows.
    """
    column = tenant_column(model)
    inner = raw_query.strip().rstrip(";").strip()
    if isinstance(params, dict):
        params = {**params, _RAW_TENANT_PARAM: tenant_id}
        marker = f"%({_RAW_TENANT_PARAM})s"
    else:
        params = [*(params or ()), tenant_id]
        marker = "%s"
    # the raw SQL is the caller's own; only the tenant is a parameter
    sql = f'SELECT * FROM ({inner}) mcpauth_raw WHERE mcpauth_raw."{column}" = {marker}'  # noqa: S608
    return sql, params


def tenant_column(model: type[models.Model]) -> str:
    """The database column of ``model``'s tenant foreign key."""
    field = model._meta.get_field("tenant")
    return str(getattr(field, "column", "tenant_id"))


def is_tenant_owned(model: Any) -> bool:
    return isinstance(model, type) and bool(getattr(model, "mcpauth_tenant_owned", False))


@cache
def tenant_relations(model: type[models.Model]) -> tuple[models.ForeignKey[Any, Any], ...]:
    """``model``'s foreign keys (one-to-ones too) to another tenant-owned model."""
    return tuple(
        f
        for f in model._meta.concrete_fields
        if isinstance(f, models.ForeignKey)
        and f.name != "tenant"
        and is_tenant_owned(f.related_model)
    )


@cache
def tenant_dependents(model: type[models.Model]) -> tuple[Any, ...]:
    """The reverse relations of other tenant-owned models' foreign keys to ``model``."""
    return tuple(
        rel
        for rel in model._meta.related_objects
        if (rel.one_to_many or rel.one_to_one) and rel.field in tenant_relations(rel.related_model)
    )


def related_in_tenant(
    field: models.ForeignKey[Any, Any], value: Any, tenant_id: int | None
) -> bool:
    """Whether the row ``value`` of ``field``'s target belongs to ``tenant_id``."""
    value = getattr(value, "pk", value)
    if value is None or tenant_id is None:
        return True
    if hasattr(value, "resolve_expression"):  # an F() or subquery: not checkable here
        return False
    target = field.related_model
    return bool(
        target._base_manager.filter(  # confined too inside a governed body
            **{field.target_field.attname: value, "tenant_id": tenant_id}
        ).exists()
    )


def _check_tenant_write(
    tenant_id: int, values: dict[str, Any] | None, model: type[models.Model]
) -> None:
    """Refuse ``values`` that would set a row's tenant to another one, or point one of its
    foreign keys at another tenant's row."""
    if not values:
        return
    for key in _TENANT_FIELDS:
        if key in values:
            given = values[key]
            if getattr(given, "pk", given) != tenant_id:  # another tenant, an F(), None ...
                raise CrossTenantAccess(
                    "A tenant-confined queryset cannot write another tenant's row."
                )
    for field in tenant_relations(model):
        for key in (field.name, field.attname):
            if key in values and not related_in_tenant(field, values[key], tenant_id):
                raise CrossTenantAccess(
                    f"{field.name}: no such {field.related_model._meta.verbose_name} in your "
                    "tenant."
                )


class ScopedQuerySet(models.QuerySet[M]):
    """``all_tenants``' queryset: confined to the running body's tenant, if any."""

    def raw(  # type: ignore[override]
        self,
        raw_query: str,
        params: Any = (),
        translations: dict[str, str] | None = None,
        using: str | None = None,
    ) -> models.query.RawQuerySet[M]:
        tenant_id = self._raw_tenant()
        if tenant_id is not None:
            raw_query, params = confine_raw(self.model, raw_query, params, tenant_id)
        return super().raw(raw_query, params, translations, using)

    def _raw_tenant(self) -> int | None:
        return active_tenant()

    def update(self, **kwargs: Any) -> int:
        # aupdate() runs this too (Django: sync_to_async(self.update))
        tenant_id = active_tenant()
        if tenant_id is not None:
            _check_tenant_write(tenant_id, kwargs, self.model)
        return super().update(**kwargs)

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        tenant_id = active_tenant()
        objs = list(objs)
        if tenant_id is not None:
            _stamp_objects(objs, tenant_id)
        return super().bulk_create(objs, *args, **kwargs)


def _stamp_objects(objs: list[Any], tenant_id: int) -> None:
    for obj in objs:
        if getattr(obj, "tenant_id", None) not in (None, tenant_id):
            raise CrossTenantAccess("A tenant-confined queryset cannot write another tenant's row.")
        obj.tenant_id = tenant_id


class ScopedManager(models.Manager.from_queryset(ScopedQuerySet)):  # type: ignore[misc]
    """``Model.all_tenants``: every tenant's rows, except inside a governed body (its tenant's).

    It is the default and the base manager of ``TenantOwned`` models, so Django's own paths
    (related objects and managers, prefetches, ``refresh_from_db``, ``save()``'s ``UPDATE``,
    the deletion collector, ``get_object_or_404``) are confined inside a governed body too.
    """

    def get_queryset(self) -> models.QuerySet[M]:
        qs = super().get_queryset()
        tenant_id = active_tenant()
        if tenant_id is not None:
            qs = qs.filter(tenant_id=tenant_id)
        return qs


class TenantQuerySet(ScopedQuerySet[M]):
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

    def _raw_tenant(self) -> int | None:
        return self._confined()

    def _refuse_other_tenant(self, values: dict[str, Any] | None) -> int:
        """The confined tenant; raises when ``values`` would set the row's tenant to another."""
        tenant_id = self._confined()
        _check_tenant_write(tenant_id, values, self.model)
        return tenant_id

    def _stamp(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        tenant_id = self._refuse_other_tenant(kwargs)
        for key in _TENANT_FIELDS:
            kwargs.pop(key, None)
        kwargs["tenant_id"] = tenant_id
        return kwargs

    def update(self, **kwargs: Any) -> int:
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
        objs = list(objs)
        _stamp_objects(objs, self._confined())
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
        return self._tenant_rows(_tenant_id(principal))

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
        """A prepared raw ``DELETE``; ``QuerySet.delete()`` for models with delete signals or
        cascades (another app's foreign key to this model, say)."""

        def fallback(values: dict[str, Any]) -> QuerySet[Any]:
            rows = self._tenant_rows(values["tenant_id"])
            return build(rows, Values(values))  # type: ignore[arg-type]

        return TenantStatement(
            PreparedDelete(
                self.model, lambda p: build(self._confined_template(), p), fallback=fallback
            )
        )

    def _tenant_rows(self, tenant_id: int) -> TenantQuerySet[M]:
        hints = getattr(self, "_hints", None)
        qs: TenantQuerySet[M] = TenantQuerySet(self.model, using=self._db, hints=hints)
        qs._tenant_id = tenant_id
        return qs.filter(tenant_id=tenant_id)

    def prepare_insert(self) -> TenantStatement:
        """A prepared one-row ``INSERT`` (the tenant comes from the principal at every run)."""
        return TenantStatement(PreparedInsert(self.model))

    def current(self) -> TenantQuerySet[M]:
        """The rows of the running tool's caller (``current_principal()``)."""
        from mcpauth.runtime.context import current_principal

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
