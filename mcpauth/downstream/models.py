"""The stored downstream secrets: API keys (``auth: api_key``) and OAuth client secrets.

A secret is stored encrypted (:mod:`mcpauth.downstream.crypto`), bound to its downstream and
tenant, and is write-only everywhere: the admin form and ``manage.py downstreams set-secret``
(which reads it from stdin) set it, nothing displays or exports it. Each change bumps
:attr:`DownstreamSecret.version` and is audited as configuration
(``config/downstream_secret.<action>``), with the version and the key id, never the value.

Not ``TenantOwned``: a secret is the platform's, read by the platform when a tool's client sends
a request, never by the tool's own queries. On PostgreSQL the restricted role that tool bodies
run as has no privilege on this table at all (``mcpauth_platform_only``, see
:mod:`mcpauth.rls`).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from mcpauth.downstream import crypto
from mcpauth.downstream.conf import get_settings

#: The longest secret accepted (an API key or client secret, not a document).
MAX_SECRET_CHARS = 4096


def secret_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as a secret, or ``None``."""
    if not value:
        return "The secret must not be empty."
    if len(value) > MAX_SECRET_CHARS:
        return f"The secret is longer than {MAX_SECRET_CHARS} characters."
    if not value.isprintable():
        return "The secret must be printable text (no newline or control characters)."
    return None


class DownstreamSecret(models.Model):
    downstream = models.CharField(
        max_length=55, help_text="The name declared in MCPAUTH_DOWNSTREAMS."
    )
    tenant = models.ForeignKey(
        "mcpauth.Tenant",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="downstream_secrets",
        help_text="Only for a downstream declared per_tenant: this tenant's own key.",
    )
    key_id = models.CharField(max_length=16, editable=False, help_text="Encryption key id.")
    ciphertext = models.TextField(editable=False)
    version = models.PositiveIntegerField(
        default=0, editable=False, help_text="How many times the secret was set."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    #: mcpauth.rls grants the restricted tenant role nothing on this table.
    mcpauth_platform_only = True

    class Meta:
        app_label = "mcpauth"
        ordering = ["downstream", "tenant__external_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["downstream", "tenant"], name="mcpauth_downstream_secret_tenant"
            ),
            models.UniqueConstraint(
                fields=["downstream"],
                condition=models.Q(tenant__isnull=True),
                name="mcpauth_downstream_secret_shared",
            ),
        ]

    def __str__(self) -> str:
        tenant = self.tenant.external_id if self.tenant_id and self.tenant else "every tenant"
        return f"{self.downstream} ({tenant})"

    def _aad(self) -> bytes:
        return f"{self.downstream}\x00{self.tenant_id or ''}".encode()

    def set_secret(self, value: str) -> None:
        """Encrypt ``value`` into this row (not saved); raise ``ValidationError``."""
        problem = secret_problem(value)
        if problem:
            raise ValidationError({"secret": problem})
        try:
            self.key_id, self.ciphertext = crypto.encrypt(
                value.encode(), purpose=crypto.SECRETS, aad=self._aad()
            )
        except crypto.KeyUnavailable as exc:
            raise ValidationError(str(exc)) from exc
        self.version += 1

    def decrypted(self) -> str:
        """The secret (the platform's credential code only); raise ``KeyUnavailable``."""
        return crypto.decrypt(
            self.key_id, self.ciphertext, purpose=crypto.SECRETS, aad=self._aad()
        ).decode()

    def reencrypt(self) -> bool:
        """Re-encrypt under the first configured key; whether anything changed (not saved)."""
        if self.key_id == crypto.current_key_id():
            return False
        value = self.decrypted()
        self.key_id, self.ciphertext = crypto.encrypt(
            value.encode(), purpose=crypto.SECRETS, aad=self._aad()
        )
        return True

    def clean(self) -> None:
        declared = get_settings().downstreams.get(self.downstream)
        if declared is None:
            raise ValidationError(
                {"downstream": "No downstream of this name is declared in MCPAUTH_DOWNSTREAMS."}
            )
        if not declared.stores_secret:
            raise ValidationError(
                {
                    "downstream": f"Downstream {self.downstream!r} (auth {declared.kind}) takes "
                    "no stored secret."
                }
            )
        if declared.per_tenant and self.tenant_id is None:
            raise ValidationError(
                {"tenant": "This downstream is declared per_tenant: choose the tenant."}
            )
        if not declared.per_tenant and self.tenant_id is not None:
            raise ValidationError(
                {"tenant": "This downstream has one secret for every tenant: leave it empty."}
            )

    def audit_values(self) -> dict[str, Any]:
        """What an audit row records about this row: never the secret."""
        return {
            "downstream": self.downstream,
            "tenant": self.tenant.external_id if self.tenant_id and self.tenant else "",
            "version": self.version,
            "key_id": self.key_id,
        }
