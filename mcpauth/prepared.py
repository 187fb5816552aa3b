"""Prepared querysets: the ORM writes a statement once, a hot path runs it again and again.

Building and compiling a queryset costs several times the query itself on a fast database
(``make bench``: about 0.4 ms of CPU for a one-row ``values()`` lookup against 0.07 ms to execute
it). Most tool calls run the same few statements with different values, so this module lets a
domain app keep writing querysets and pay for building them once:

    ROW = Todo.objects.prepare(
        lambda todos, p: todos.filter(pk=p.pk).values("id", "title").order_by()[:1]
    )
    row = ROW.first(principal, pk=todo_id)       # {"id": ..., "title": ...} or None

* The builder gets the model's tenant-confined queryset (``TenantManager.prepare``; the tenant is
  a parameter bound from the principal at every run, so a prepared statement cannot leave the
  caller's tenant either) and a parameter source ``p``: ``p.name`` stands for a value given at
  run time. A parameter named like a model field (``pk``, ``created_at`` ...) is prepared by that
  field, as the ORM prepares lookup values (a UUID on SQLite, an aware datetime ...).
* Django's own compiler writes the SQL, once per database alias, and Django's own converters turn
  the rows into Python values; execution goes through Django's cursor (query logging,
  ``django_assert_num_queries``, execute wrappers all see it).
* Four shapes: ``values()`` querysets (:meth:`PreparedQuery.rows` / :meth:`~PreparedQuery.first`),
  ``UPDATE`` of named fields (``TenantManager.prepare_update``), a raw ``DELETE``
  (``prepare_delete``, only where Django itself would fast-delete: no signals, no cascades) and
  an ``INSERT`` of one row (``prepare_insert``, only for models without save signals; fields
  left out get their default, and ``auto_now``/``auto_now_add`` fields the current time, as
  ``Model.save()`` would give them).
* A statement whose shape varies (an optional filter, a different set of changed fields) is one
  prepared query per shape: keep them in a ``functools.cache``-d factory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connections, router
from django.db.models import DateField, Expression, Model, QuerySet, signals
from django.db.models.deletion import Collector
from django.db.models.sql import DeleteQuery, InsertQuery, UpdateQuery
from django.utils import timezone

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper


@dataclass(frozen=True)
class _Marker:
    """Stands in the compiled parameter list for a value given at run time."""

    name: str


class Param(Expression):
    """A run-time value in a prepared queryset; compiles to a bare placeholder."""

    def __init__(self, name: str, output_field: Any = None) -> None:
        super().__init__(output_field=output_field)
        self.name = name

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        return "%s", [_Marker(self.name)]

    def resolve_expression(self, *args: Any, **kwargs: Any) -> Param:
        return self

    def get_group_by_cols(self) -> list[Any]:
        return []

    def __repr__(self) -> str:
        return f"Param({self.name!r})"


class Params:
    """``p.name`` → :class:`Param` ``name`` (the builder's parameter source)."""

    def __getattr__(self, name: str) -> Param:
        if name.startswith("__"):
            raise AttributeError(name)
        return Param(name)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    params: tuple[Any, ...]
    names: tuple[str, ...]
    #: ``(position, converters, expression)`` for the result columns that need converting
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]


class PreparedQuery:
    """One statement shape of ``model``, compiled on first use per database alias."""

    kind = "select"

    def __init__(
        self,
        model: type[Model],
        build: Callable[[Params], Any],
        *,
        bind: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.model = model
        self._build = build
        self._bind = bind
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()
        self._fields = {f.attname: f for f in model._meta.concrete_fields}
        self._fields.setdefault("pk", model._meta.pk)  # type: ignore[arg-type]
        for f in model._meta.concrete_fields:
            self._fields.setdefault(f.name, f)

    # --- compiling ---------------------------------------------------------------------------

    def _queryset(self, alias: str) -> QuerySet[Any]:
        qs = self._build(Params())
        if not isinstance(qs, QuerySet):
            raise TypeError("a prepared query's builder must return a queryset")
        return qs.using(alias)

    def _compile(self, alias: str) -> _Compiled:
        qs = self._queryset(alias)
        query = qs.query
        if self.kind == "select" and query.values_select == () and not query.annotation_select:
            raise TypeError("prepare a values() queryset: rows come back as dicts")
        compiler = query.get_compiler(alias)
        sql, params = compiler.as_sql()
        names = (*query.extra_select, *query.values_select, *query.annotation_select)
        select = [s[0] for s in compiler.select[: compiler.col_count]]
        converters = tuple(
            (pos, tuple(convs), expr)
            for pos, (convs, expr) in compiler.get_converters(select).items()
        )
        return _Compiled(sql, tuple(params), names, converters)

    def compiled(self, alias: str) -> _Compiled:
        found = self._compiled.get(alias)
        if found is None:
            with self._lock:
                found = self._compiled.get(alias)
                if found is None:
                    found = self._compiled[alias] = self._compile(alias)
        return found

    # --- running -----------------------------------------------------------------------------

    def _params(
        self, compiled: _Compiled, values: dict[str, Any], conn: BaseDatabaseWrapper
    ) -> list[Any]:
        if self._bind is not None:
            values = self._bind(values)
        out = []
        for param in compiled.params:
            if isinstance(param, _Marker):
                if param.name not in values:
                    raise TypeError(f"missing value for prepared parameter {param.name!r}")
                value = values[param.name]
                field = self._fields.get(param.name)
                if field is not None and value is not None:
                    value = field.get_db_prep_value(value, connection=conn, prepared=False)
                out.append(value)
            else:
                out.append(param)
        return out

    def _execute(self, values: dict[str, Any], *, write: bool) -> tuple[_Compiled, Any]:
        alias = (router.db_for_write if write else router.db_for_read)(self.model)
        conn = connections[alias]
        compiled = self.compiled(alias)
        cursor = conn.cursor()
        cursor.execute(compiled.sql, self._params(compiled, values, conn))
        return compiled, cursor

    def rows(self, **values: Any) -> list[dict[str, Any]]:
        """Every row, as ``values()`` would give it."""
        compiled, cursor = self._execute(values, write=False)
        with cursor:
            raw = cursor.fetchall()
        return list(self._convert(compiled, raw, cursor.db))

    def first(self, **values: Any) -> dict[str, Any] | None:
        rows = self.rows(**values)
        return rows[0] if rows else None

    @staticmethod
    def _convert(compiled: _Compiled, raw: list[Any], conn: Any) -> Iterator[dict[str, Any]]:
        names = compiled.names
        for record in raw:
            row = list(record)
            for pos, convs, expr in compiled.converters:
                value = row[pos]
                for convert in convs:
                    value = convert(value, expr, conn)
                row[pos] = value
            yield dict(zip(names, row, strict=True))

    def run(self, **values: Any) -> int:
        """Execute a write; the number of rows it changed."""
        _, cursor = self._execute(values, write=True)
        with cursor:
            return int(cursor.rowcount)


class PreparedUpdate(PreparedQuery):
    """``UPDATE … SET field = %s, … WHERE <the builder's filter>``."""

    kind = "update"

    def __init__(
        self, model: type[Model], build: Callable[[Params], Any], fields: tuple[str, ...], **kw: Any
    ) -> None:
        super().__init__(model, build, **kw)
        self.fields = fields

    def _compile(self, alias: str) -> _Compiled:
        qs = self._queryset(alias)
        query: Any = qs.query.chain(UpdateQuery)
        query.add_update_values({name: Param(name) for name in self.fields})
        sql, params = query.get_compiler(alias).as_sql()
        return _Compiled(sql, tuple(params), (), ())


class Values:
    """``v.name`` → the run-time value ``name`` (a builder run with real values)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._values[name]


class PreparedDelete(PreparedQuery):
    """A raw ``DELETE … WHERE <the builder's filter>`` where Django would fast-delete.

    A model with delete signals or cascades (another app's foreign key to it, say) is deleted
    through ``QuerySet.delete()`` instead, on the queryset ``fallback(values)`` returns; without
    a fallback it is refused.
    """

    kind = "delete"

    def __init__(
        self,
        model: type[Model],
        build: Callable[[Params], Any],
        *,
        fallback: Callable[[dict[str, Any]], QuerySet[Any]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, build, **kw)
        self._fallback = fallback
        self._fast_by_alias: dict[str, bool] = {}

    def _fast(self, alias: str) -> bool:
        """Whether Django would fast-delete (decided once per alias, like the compiled SQL)."""
        fast = self._fast_by_alias.get(alias)
        if fast is None:
            qs = self._queryset(alias)
            fast = self._fast_by_alias[alias] = bool(
                Collector(using=alias, origin=qs).can_fast_delete(qs)
            )
        return fast

    def _compile(self, alias: str) -> _Compiled:
        if not self._fast(alias):
            raise TypeError(
                f"{self.model.__name__} has delete signals or cascades: use QuerySet.delete()"
            )
        query = self._queryset(alias).query.chain(DeleteQuery)
        sql, params = query.get_compiler(alias).as_sql()
        return _Compiled(sql, tuple(params), (), ())

    def run(self, **values: Any) -> int:
        if self._fallback is not None:
            alias = router.db_for_write(self.model)
            if not self._fast(alias):
                _, per_model = self._fallback(values).using(alias).delete()
                return int(per_model.get(self.model._meta.label, 0))
        return super().run(**values)


class PreparedInsert(PreparedQuery):
    """``INSERT INTO … VALUES (%s, …)`` of one row, every column, by Django's compiler."""

    kind = "insert"

    def __init__(self, model: type[Model], **kw: Any) -> None:
        super().__init__(model, lambda p: None, **kw)
        if signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model):
            raise TypeError(f"{model.__name__} has save signals: use QuerySet.create()")
        # every column, as Model.save() inserts them (a database-generated pk is left out)
        self.insert_fields = [
            f for f in model._meta.concrete_fields if not getattr(f, "db_returning", False)
        ]

    def _compile(self, alias: str) -> _Compiled:
        row = self.model()
        for field in self.insert_fields:
            setattr(row, field.attname, Param(field.attname))
        query = InsertQuery(self.model)
        query.insert_values(self.insert_fields, [row], raw=True)  # raw: no pre_save, Params kept
        ((sql, params),) = query.get_compiler(alias).as_sql()
        return _Compiled(sql, tuple(params), (), ())

    def values_for(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` completed as ``Model.save()`` would: defaults and ``auto_now`` times."""
        now = None
        out = dict(values)
        for field in self.insert_fields:
            if field.attname in out:
                continue
            if isinstance(field, DateField) and (field.auto_now or field.auto_now_add):
                now = now or timezone.now()
                out[field.attname] = now
            else:
                out[field.attname] = field.get_default()
        return out

    def run(self, **values: Any) -> int:
        return super().run(**self.values_for(values))
