"""The append-only audit trail: one row per MCP access, whatever its outcome."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone


class Outcome(models.TextChoices):
    OK = "ok", "ok"
    TOOL_ERROR = "tool_error", "tool error"
    DENIED = "denied", "denied"
    RATE_LIMITED = "rate_limited", "rate limited"
    UNAUTHENTICATED = "unauthenticated", "unauthenticated"
    INVALID_REQUEST = "invalid_request", "invalid request"
    SERVER_ERROR = "server_error", "server error"


class AppendOnlyError(Exception):
    pass


class AuditEvent(models.Model):
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
    status = models.PositiveSmallIntegerField(help_text="HTTP status of the response.")
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

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at", "id"], name="audit_time"),
            models.Index(fields=["tenant", "created_at", "id"], name="audit_tenant_time"),
            models.Index(fields=["client_id", "created_at", "id"], name="audit_client_time"),
            models.Index(fields=["outcome", "created_at", "id"], name="audit_outcome_time"),
            models.Index(fields=["tool", "created_at", "id"], name="audit_tool_time"),
            models.Index(fields=["request_id"], name="audit_request_id"),
            models.Index(fields=["subject"], name="audit_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.method} {self.tool} {self.outcome}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise AppendOnlyError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise AppendOnlyError("audit events are append-only; use audit_prune for retention")
