"""The request's value types: who is calling, for which tenant, and what the rate limit left.

A leaf module: it imports nothing from ``mcpauth`` (or from Django), so every other module, a
domain app's services and the type hints of ``audit`` may use these types without importing
the identity or rate-limit machinery that makes them. They used to live in
:mod:`mcpauth.identity.tokens` and :mod:`mcpauth.admission.ratelimit`, which still re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Principal", "TenantRef", "Usage", "VerifiedToken"]


@dataclass(frozen=True, slots=True)
class TenantRef:
    id: int
    external_id: str
    #: The issuer the tenant belongs to (its namespace): ``(issuer, external_id)`` is unique.
    issuer: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, for which tenant, with which rights. Made once per request."""

    client_id: str
    subject: str
    tenant: TenantRef
    scopes: frozenset[str]
    permissions: frozenset[str]
    #: ``jti``, or a short sha256 fingerprint of the token; never the token itself.
    token_id: str
    #: The issuer that vouched for the token (the namespace of ``client_id`` and ``subject``).
    #: The tenant's own issuer is ``tenant.issuer``: another one only through an operator's
    #: alias or client binding.
    issuer: str = ""

    def has_perm(self, perm: str) -> bool:
        return perm in self.permissions

    def has_perms(self, perms: tuple[str, ...] | frozenset[str]) -> bool:
        return all(p in self.permissions for p in perms)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: dict[str, Any]
    client_id: str
    subject: str
    scopes: frozenset[str]
    token_id: str
    #: The configured issuer whose key verified the token (``IssuerConfig.issuer``).
    issuer: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """One rate-limit count: the limit, what is left of it, and when the window resets."""

    limit: int
    remaining: int
    window: int
    reset: int
    policy: str = "default"

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("ratelimit-policy", f'"{self.policy}";q={self.limit};w={self.window}'),
            ("ratelimit", f'"{self.policy}";r={self.remaining};t={self.reset}'),
            ("x-ratelimit-limit", str(self.limit)),
            ("x-ratelimit-remaining", str(self.remaining)),
            ("x-ratelimit-reset", str(self.reset)),
        ]
