"""Admin building blocks for any app: audited data changes and identifiers shown visibly.

:class:`AuditedModelAdmin` audits every change the admin makes to a model's rows, whichever
admin path made it, as ``data/<app_label>.<model_name>.<action>`` rows (:mod:`audit.changes`)
with the staff user as ``actor``:

* the add and change views and ``list_editable`` (``create`` / ``update``, after
  ``save_related``, so m2m fields and inlines count as part of the change); a save that changes
  nothing stored leaves no row;
* the delete view (``delete``) and the built-in ``delete_selected`` action (``delete``, one row
  per deleted object, with ``batch``: how many were deleted together; one row per object so
  that each carries its own tenant and can be found by its id);
* every other admin action (its own name, ``data/todos.todo.mark_done``): one row per selected
  object whose stored row it changed or removed; when it changed none of them, one row per
  distinct set of columns (per tenant) saying so, with the selected ids. What an action does
  to rows it was not given (copies it creates, related rows) is not seen here.

A row holds the object's ``id``, the NAMES of the changed fields (``fields``; m2m fields
included), inline changes as ids per model (``inlines``: ``[{"model", "added": [id], "changed":
{id: [field]}, "deleted": [id]}]``) and, for a delete, what else the delete removed
(``cascade``: ``[model label, count]`` pairs, :func:`cascade`). Never a field value: domain data
can be as sensitive as tool arguments. The rows are written in the transaction of the change
(the admin's views run in one; ``delete_selected`` and the actions are wrapped in one here), so
if the audit write fails, the change does not persist.

Subclasses say which columns a row gets (:meth:`AuditedModelAdmin.audit_columns`, e.g. the
tenant) and what else it records (:meth:`AuditedModelAdmin.audit_details`, ids only).

:class:`VisibleNamesMixin` shows an object's name (``str(obj)``) by :mod:`audit.display` where
the admin shows it: the change form's heading, page title and breadcrumbs, and the label of its
action checkbox.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.db import models, router, transaction
from django.db.models import QuerySet
from django.db.models.deletion import Collector
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from audit.changes import record_data_change, request_actor
from audit.display import visible_text

Snapshot = dict[str, Any]
#: At most this many ids in the row of an action that changed none of the selected rows (the
#: default ``max_items`` of :func:`audit.redaction.redact`).
MAX_IDS = 50
#: The change form whose heading, page title and breadcrumbs show the object visibly.
VISIBLE_CHANGE_FORM = "admin/audit/visible_change_form.html"


class VisibleNamesMixin(admin.ModelAdmin):
    """The object's name shown visibly in the change form and its action checkbox's label."""

    change_form_template = VISIBLE_CHANGE_FORM

    class Media:
        css = {"all": ("audit/admin.css",)}

    def action_checkbox(self, obj: Any) -> SafeString:
        """Django's action checkbox, its ``aria-label`` naming the object visibly."""
        label = gettext("Select this object for an action - {}")
        attrs = {"class": "action-select", "aria-label": format_html(label, visible_text(obj))}
        checkbox = forms.CheckboxInput(attrs, lambda value: False)
        return checkbox.render(helpers.ACTION_CHECKBOX_NAME, str(obj.pk))


def cascade(obj: models.Model) -> list[list[Any]]:
    """What deleting ``obj`` also deletes: ``[[model label, count], ...]`` (read before it goes)."""
    collector = Collector(using=router.db_for_write(type(obj)), origin=obj)
    collector.collect([obj])
    counts: Counter[str] = Counter()
    for model, instances in collector.data.items():
        counts[model._meta.label_lower] += len(instances)
    for queryset in collector.fast_deletes:
        counts[queryset.model._meta.label_lower] += queryset.count()
    counts[obj._meta.label_lower] -= 1
    return sorted([label, n] for label, n in counts.items() if n > 0)


def _concrete(model: type[models.Model]) -> list[models.Field[Any, Any]]:
    return [f for f in model._meta.concrete_fields if not f.primary_key]


def _is_set(value: Any) -> bool:
    return value is not None and value != ""


class AuditedModelAdmin(VisibleNamesMixin):
    """Audits every admin change to this model's rows (see the module docstring)."""

    # --- what a row says (for subclasses) --------------------------------------------------------

    def audit_columns(
        self, request: HttpRequest, before: Snapshot, after: Snapshot
    ) -> list[dict[str, str]]:
        """The ``tenant``/``client_id`` columns of the rows about one object's change.

        One row is written per dict (a row moved between tenants can be named in both tenants'
        trails). ``before``/``after`` are the stored values by attname, ``{}`` when absent.
        """
        return [{}]

    def audit_details(
        self, request: HttpRequest, before: Snapshot, after: Snapshot
    ) -> dict[str, Any]:
        """More ``arguments`` for the rows about one object's change: ids, never values."""
        return {}

    # --- reading the stored rows -----------------------------------------------------------------

    def _db(self) -> str:
        return router.db_for_write(self.model)

    def _stored(self, pks: Iterable[Any]) -> dict[Any, Snapshot]:
        """``{pk: {attname: value}}`` as stored now (the unconfined base manager)."""
        pks = list(pks)
        if not pks:
            return {}
        pk_name = self.model._meta.pk.attname
        names = [pk_name, *(f.attname for f in _concrete(self.model))]
        rows = (
            self.model._base_manager.using(self._db()).filter(pk__in=pks).order_by().values(*names)
        )
        return {row.pop(pk_name): row for row in rows}

    def _changed(self, before: Snapshot, after: Snapshot) -> list[str]:
        """Names (not attnames) of the concrete fields whose stored value differs."""
        return [
            f.name
            for f in _concrete(self.model)
            if before.get(f.attname) != after.get(f.attname)
            and (before or _is_set(after.get(f.attname)))  # a new row: the fields it has
        ]

    # --- writing rows ----------------------------------------------------------------------------

    def _record(
        self,
        request: HttpRequest,
        action: str,
        arguments: Mapping[str, Any],
        before: Snapshot,
        after: Snapshot,
    ) -> None:
        details = {**arguments, **self.audit_details(request, before, after)}
        request_id = uuid.uuid4().hex  # the rows about one change share it
        for columns in self.audit_columns(request, before, after):
            record_data_change(
                self.model,
                action,
                actor=request_actor(request),
                arguments=details,
                request=request,
                tenant=columns.get("tenant", ""),
                client_id=columns.get("client_id", ""),
                request_id=request_id,
            )

    # --- add, change, list_editable --------------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = self._stored([obj.pk]).get(obj.pk, {}) if change and obj.pk is not None else {}
        super().save_model(request, obj, form, change)
        pending: dict[int, Snapshot] = request.__dict__.setdefault("_audit_data_before", {})
        pending[id(obj)] = before

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        formsets = list(formsets or ())
        doomed = [_doomed_ids(formset) for formset in formsets]  # their pks go when deleted
        super().save_related(request, form, formsets, change)
        obj = form.instance
        before = request.__dict__.get("_audit_data_before", {}).pop(id(obj), {})
        after = self._stored([obj.pk]).get(obj.pk, {})
        fields = self._changed(before, after)
        many = {f.name for f in self.model._meta.many_to_many}
        fields += sorted(name for name in getattr(form, "changed_data", ()) if name in many)
        inlines = _inline_changes(formsets, doomed)
        if change and not fields and not inlines:
            return
        arguments: dict[str, Any] = {"id": str(obj.pk), "fields": sorted(fields)}
        if inlines:
            arguments["inlines"] = inlines
        self._record(request, "update" if change else "create", arguments, before, after)

    # --- delete view, delete_selected ------------------------------------------------------------

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic(using=self._db()):
            pk = obj.pk
            arguments = self._delete_arguments(obj)
            before = self._stored([pk]).get(pk, {})
            super().delete_model(request, obj)
            self._record(request, "delete", arguments, before, {})

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic(using=self._db()):
            objs = list(queryset)
            arguments = {obj.pk: self._delete_arguments(obj, batch=len(objs)) for obj in objs}
            before = self._stored(arguments)
            super().delete_queryset(request, queryset)
            for pk, args in arguments.items():
                self._record(request, "delete", args, before.get(pk, {}), {})

    def _delete_arguments(self, obj: Any, batch: int | None = None) -> dict[str, Any]:
        arguments: dict[str, Any] = {"id": str(obj.pk)}
        if batch is not None:
            arguments["batch"] = batch
        if also := cascade(obj):
            arguments["cascade"] = also
        return arguments

    # --- custom actions --------------------------------------------------------------------------

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = {}
        for name, entry in super().get_actions(request).items():
            if entry is None:
                continue
            func, _, description = entry
            wrap = self._atomic(func) if name == "delete_selected" else self._audited(func, name)
            actions[name] = (wrap, name, description)
        return actions

    def _atomic(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``delete_selected`` in one transaction: its admin log entries, deletes and rows."""

        @functools.wraps(func)
        def run(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
            with transaction.atomic(using=self._db()):
                return func(modeladmin, request, queryset)

        return run

    def _audited(self, func: Callable[..., Any], name: str) -> Callable[..., Any]:
        """``func`` run in a transaction with a row per object it changed (or one saying none)."""

        @functools.wraps(func)
        def run(
            modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]
        ) -> HttpResponseBase | None:
            with transaction.atomic(using=self._db()):
                pks = list(queryset.order_by().values_list("pk", flat=True))
                before = self._stored(pks)
                response = func(modeladmin, request, queryset)
                after = self._stored(pks)
                self._record_action(request, name, before, after)
            return response

        return run

    def _record_action(
        self,
        request: HttpRequest,
        name: str,
        before: dict[Any, Snapshot],
        after: dict[Any, Snapshot],
    ) -> None:
        changed = 0
        for pk, old in before.items():
            new = after.get(pk)
            if new is None:
                arguments: dict[str, Any] = {"id": str(pk), "action": name, "deleted": True}
                self._record(request, name, arguments, old, {})
            elif fields := self._changed(old, new):
                arguments = {"id": str(pk), "action": name, "fields": fields}
                self._record(request, name, arguments, old, new)
            else:
                continue
            changed += 1
        if changed:
            return
        # Nothing stored changed: one row per distinct set of columns (per tenant), with the ids.
        groups: dict[tuple[tuple[str, str], ...], list[Any]] = {}
        for pk, old in before.items():
            for columns in self.audit_columns(request, old, old):
                groups.setdefault(tuple(sorted(columns.items())), []).append(pk)
        for key, pks in groups.items() or [((), [])]:
            record_data_change(
                self.model,
                name,
                actor=request_actor(request),
                arguments={
                    "action": name,
                    "selected": len(pks),
                    "ids": [str(pk) for pk in pks[:MAX_IDS]],
                    "changed": 0,
                },
                request=request,
                tenant=dict(key).get("tenant", ""),
                client_id=dict(key).get("client_id", ""),
            )


def _doomed_ids(formset: Any) -> list[str]:
    """Ids of the stored objects an inline formset is about to delete (read before saving)."""
    try:
        deleted = formset.deleted_forms
        return [str(f.instance.pk) for f in formset.initial_forms if f in deleted]
    except AttributeError:  # not a model formset
        return []


def _inline_changes(formsets: list[Any], doomed: list[list[str]]) -> list[dict[str, Any]]:
    """What each inline formset added, changed (field names) and deleted, by object id."""
    found = []
    for formset, deleted_ids in zip(formsets, doomed, strict=True):
        model = getattr(formset, "model", None)
        if model is None:
            continue
        entry: dict[str, Any] = {"model": model._meta.label_lower}
        added = [str(o.pk) for o in getattr(formset, "new_objects", ())]
        changed = {str(o.pk): sorted(names) for o, names in getattr(formset, "changed_objects", ())}
        deleted = deleted_ids if getattr(formset, "deleted_objects", ()) else []
        if added:
            entry["added"] = added
        if changed:
            entry["changed"] = changed
        if deleted:
            entry["deleted"] = deleted
        if len(entry) > 1:
            found.append(entry)
    return found
