"""The append-only audit trail: one row per MCP access, whatever its outcome.

* :class:`AuditEvent` rows are only ever inserted (by :func:`audit.recorder.record`). Every ORM
  path that would rewrite or remove one raises :class:`AppendOnlyError`: ``Model.save()`` of a
  stored row or of a new instance with an existing pk, ``Model.delete()``, and the queryset's
  ``update()``, ``delete()`` and ``bulk_update()``. On PostgreSQL a trigger (migration 0003)
  refuses ``UPDATE`` and ``DELETE`` in SQL as well, except the retention path
  (:mod:`audit.retention`), which opens it for its own transaction only.
* :class:`AuditSeal` rows seal the trail in id order, in blocks: a signed hash chain
  (:mod:`audit.sealing`). Seals are append-only in the same way.
* :class:`AuditRollup` holds per-day call counts of sealed rows, written with each seal and
  read by the overview (:mod:`audit.overview`). It is derived data, not evidence.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models
from django.utils import timezone


class Outcome(models.TextChoices):
    OK = "ok", "ok"
    TOOL_ERROR = "tool_error", "tool error"
    DENIED = "denied", "denied"
    RATE_LIMITED = "rate_limited", "rate limited"
    UNAUTHENTICATED = "unauthenticated", "unauthenticated"
    INVALID_REQUEST = "invalid_request", "invalid request"
    #: Accepted and never executed: a request method sent as a notification (no ``id``), which
    #: the server must not answer.
    NOT_EXECUTED = "not_executed", "not executed"
    SERVER_ERROR = "server_error", "server error"
    #: A round of a multi-round-trip call (MCP 2026-07-28) that asked the client for input
    #: (``InputRequiredResult``); the round that continues it names this row's ``request_id``.
    INPUT_REQUIRED = "input_required", "input required"
    #: The client cancelled the call or went away before it completed.
    CANCELLED = "cancelled", "cancelled"


#: Every outcome but ``ok`` and ``input_required`` (a round that asked the client for input did
#: what it should): what the admin's "any failure" choice selects.
FAILURES: tuple[str, ...] = tuple(
    o for o in Outcome.values if o not in (Outcome.OK, Outcome.INPUT_REQUIRED)
)
#: ``method`` prefixes of the rows the trail writes about itself (configuration and data changes
#: made in the admin or by command, exports, pruning), as opposed to MCP calls.
SELF_AUDIT_PREFIXES: tuple[str, ...] = ("config/", "data/", "audit/")
#: ``method`` prefix of the rows that record a call the server made to another system on behalf
#: of an MCP call (``outbound/<downstream>``; same ``request_id`` as that call).
OUTBOUND_PREFIX = "outbound/"


class AppendOnlyError(Exception):
    """An attempt to change or remove audit rows outside the retention path."""


def _refuse(what: str) -> NoReturn:
    raise AppendOnlyError(
        f"{what}: audit rows are append-only; only audit_prune removes whole sealed blocks"
    )


class AppendOnlyQuerySet(models.QuerySet):
    """A queryset that can read and insert, and refuses to rewrite or remove rows."""

    def update(self, **kwargs: Any) -> NoReturn:
        _refuse("QuerySet.update()")

    def _update(self, values: Any) -> NoReturn:
        _refuse("QuerySet._update()")

    def delete(self) -> NoReturn:
        _refuse("QuerySet.delete()")

    def _raw_delete(self, using: Any) -> NoReturn:
        _refuse("QuerySet._raw_delete()")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> NoReturn:
        _refuse("QuerySet.bulk_update()")

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("QuerySet.update_or_create()")

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        # an upsert (INSERT ... ON CONFLICT DO UPDATE) rewrites the rows it collides with
        if kwargs.get("update_conflicts") or (len(args) >= 3 and args[2]):
            _refuse("QuerySet.bulk_create(update_conflicts=True)")
        return super().bulk_create(objs, *args, **kwargs)


class AppendOnlyModel(models.Model):
    """Abstract base: ``save()`` inserts or raises; ``delete()`` raises."""

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True
        # Django's own internals (Model.save's UPDATE, related deletes) use the base manager.
        base_manager_name = "objects"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse(f"{type(self).__name__}.save() of a stored row")
        if self.pk is not None and type(self).objects.filter(pk=self.pk).exists():
            _refuse(f"{type(self).__name__}.save() over an existing pk")
        kwargs["force_insert"] = True
        kwargs.pop("force_update", None)
        kwargs.pop("update_fields", None)
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(f"{type(self).__name__}.delete()")


class AuditEvent(AppendOnlyModel):
    created_at = models.DateTimeField(default=timezone.now)
    request_id = models.CharField(max_length=64)
    tenant = models.CharField(max_length=255, blank=True, help_text="Tenant external id.")
    client_id = models.CharField(max_length=255, blank=True)
    subject = models.CharField(max_length=255, blank=True)
    token_id = models.CharField(
        max_length=160, blank=True, help_text="The token's jti, or a sha256 fingerprint."
    )
    scopes = models.CharField(max_length=1000, blank=True)
    method = models.CharField(max_length=64, blank=True, help_text="JSON-RPC method.")
    tool = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    status = models.PositiveSmallIntegerField(
        help_text="HTTP status of the response (0: a management command, no HTTP response)."
    )
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    duration_ms = models.FloatField(default=0)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    arguments = models.JSONField(default=dict, blank=True, help_text="Redacted tool arguments.")
    actor = models.CharField(
        max_length=255,
        blank=True,
        db_default="",
        help_text="Who made a configuration change or export: the staff username, or "
        "cli:<user> for a management command.",
    )
    trace_id = models.CharField(
        max_length=32,
        blank=True,
        db_default="",
        help_text="The OpenTelemetry trace id of the request.",
    )
    issuer = models.CharField(
        max_length=255,
        blank=True,
        db_default="",
        help_text="The identity provider that issued the caller's verified token (the namespace "
        "of client_id and subject); for a configuration change, the issuer of what changed.",
    )

    class Meta(AppendOnlyModel.Meta):
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at", "id"], name="audit_time"),
            models.Index(fields=["tenant", "created_at", "id"], name="audit_tenant_time"),
            models.Index(fields=["client_id", "created_at", "id"], name="audit_client_time"),
            models.Index(fields=["outcome", "created_at", "id"], name="audit_outcome_time"),
            models.Index(fields=["tool", "created_at", "id"], name="audit_tool_time"),
            # Identifier look-ups: equality and prefix search (LIKE 'abc%' on PostgreSQL, whose
            # default operator class cannot serve LIKE outside the C collation).
            models.Index(
                fields=["request_id"], name="audit_request_id", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["subject"], name="audit_subject", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["token_id"], name="audit_token_id", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["client_id"], name="audit_client_prefix", opclasses=["varchar_pattern_ops"]
            ),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.method} {self.tool} {self.outcome}"

    @property
    def is_self_audit(self) -> bool:
        """A configuration or data change, export or prune, not an MCP call."""
        return self.method.startswith(SELF_AUDIT_PREFIXES)

    @property
    def is_outbound(self) -> bool:
        """A call to another system made by an MCP call (``outbound/<downstream>``)."""
        return self.method.startswith(OUTBOUND_PREFIX)


class AuditSeal(AppendOnlyModel):
    """One signed block of the hash chain over :class:`AuditEvent` rows (see audit.sealing).

    The blocks tile the id space: a block covers every id from ``first_id`` (the previous
    block's ``last_id + 1``) to ``last_id``, so any row whose id lies in a sealed range must be
    one of the block's rows.
    """

    version = models.PositiveSmallIntegerField(default=1)
    first_id = models.BigIntegerField(unique=True)
    last_id = models.BigIntegerField(unique=True)
    row_count = models.PositiveIntegerField()
    first_at = models.DateTimeField(null=True, help_text="Earliest created_at in the block.")
    last_at = models.DateTimeField(null=True, help_text="Latest created_at in the block.")
    id_runs = models.JSONField(
        default=list, help_text="The ids present, as [first, last] runs of consecutive ids."
    )
    row_index = models.BinaryField(
        help_text="The first 8 bytes of every row's SHA-256, in id order (to name a bad row)."
    )
    index_hash = models.CharField(max_length=64, help_text="SHA-256 of id_runs and row_index.")
    rows_hash = models.CharField(
        max_length=64, help_text="SHA-256 over the full SHA-256 of every row, in id order."
    )
    prev_hash = models.CharField(
        max_length=64, unique=True, help_text="The previous seal's seal_hash (zeros at genesis)."
    )
    seal_hash = models.CharField(max_length=64, unique=True)
    key_id = models.CharField(max_length=32)
    signature = models.CharField(max_length=128, help_text="Ed25519 over the header, base64.")
    sealed_at = models.DateTimeField()

    class Meta(AppendOnlyModel.Meta):
        ordering = ["first_id"]
        indexes = [models.Index(fields=["last_at"], name="audit_seal_last_at")]

    def __str__(self) -> str:
        return f"seal {self.pk}: rows {self.first_id}-{self.last_id} ({self.row_count})"


class AuditRollup(models.Model):
    """Calls per UTC day and (tenant, client, tool, outcome, kind), for sealed rows only.

    Written in the transaction that writes each seal (so it always covers exactly the rows up to
    the last sealed id), reduced by ``audit_prune`` in the transaction that deletes rows.
    """

    class Kind(models.TextChoices):
        CALL = "call", "MCP call"
        CONFIG = "config", "configuration change or export"
        OUTBOUND = "outbound", "outbound call"

    day = models.DateField()
    tenant = models.CharField(max_length=255, blank=True)
    client_id = models.CharField(max_length=255, blank=True)
    tool = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=20)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.CALL)
    calls = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "tenant", "client_id", "tool", "outcome", "kind"],
                name="audit_rollup_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tenant}/{self.client_id}/{self.tool} {self.outcome}: {self.calls}"


class Overview(AuditEvent):
    """The admin's ``/admin/audit/overview/`` page (a proxy: no table, no permissions of its own:
    the audit view permission is enough)."""

    class Meta:
        proxy = True
        verbose_name = "overview"
        verbose_name_plural = "overview"
        default_permissions = ()
