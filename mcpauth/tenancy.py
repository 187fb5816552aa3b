"""Which tenant a verified token belongs to. Exactly one, or the call is refused.

1. the claim named by ``MCPAUTH_TENANT_CLAIM`` (default ``oid``, Scalekit's organisation id);
2. else an admin-managed :class:`~mcpauth.models.ClientBinding` for the token's ``client_id``;
3. else 403. There is never a shared default tenant.

Unknown tenants are created on first sight unless ``MCPAUTH_AUTO_PROVISION_TENANTS`` is off.
A suspended tenant is refused with 403.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save

from mcpauth import revocation
from mcpauth.conf import get_settings
from mcpauth.exceptions import AccessDenied, InvalidToken
from mcpauth.localcache import TTLCache, require_io
from mcpauth.models import ClientBinding, Tenant
from mcpauth.tokens import TenantRef, VerifiedToken

_ttl = lambda: get_settings().cache_ttl  # noqa: E731
#: external_id -> (TenantRef, suspended) or None
_by_external_id: TTLCache[tuple[TenantRef, bool] | None] = TTLCache(_ttl)
#: client_id -> (TenantRef, suspended) or None
_by_client: TTLCache[tuple[TenantRef, bool] | None] = TTLCache(_ttl)


def _claim_value(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None or value == "":
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, str | int)
        or len(str(value)) > 255
        or not str(value).isprintable()
    ):
        raise InvalidToken(f"Claim '{name}' is malformed.", reason="bad_claim")
    return str(value)


def _load_tenant(external_id: str) -> tuple[TenantRef, bool] | None:
    row = Tenant.objects.filter(external_id=external_id).values("id", "suspended").first()
    if row is None:
        return None
    return TenantRef(row["id"], external_id), row["suspended"]


def _load_binding(client_id: str) -> tuple[TenantRef, bool] | None:
    row = (
        ClientBinding.objects.filter(client_id=client_id)
        .values("tenant_id", "tenant__external_id", "tenant__suspended")
        .first()
    )
    if row is None:
        return None
    return TenantRef(row["tenant_id"], row["tenant__external_id"]), row["tenant__suspended"]


def resolve(token: VerifiedToken) -> TenantRef:
    conf = get_settings()
    external_id = _claim_value(token.claims, conf.tenant_claim)
    if external_id is not None:
        found = _by_external_id.get_or_load(external_id, lambda: _load_tenant(external_id))
        if found is None:
            if not conf.auto_provision_tenants:
                raise AccessDenied("Unknown tenant.", reason="unknown_tenant")
            require_io()
            tenant, _ = Tenant.objects.get_or_create(
                external_id=external_id, defaults={"name": external_id}
            )
            found = (TenantRef(tenant.pk, external_id), tenant.suspended)
            _by_external_id.put(external_id, found)  # after the save signal cleared the cache
    else:
        found = _by_client.get_or_load(token.client_id, lambda: _load_binding(token.client_id))
        if found is None:
            raise AccessDenied(
                f"No tenant: the token has no '{conf.tenant_claim}' claim and client is not "
                "bound to a tenant.",
                reason="no_tenant",
            )
    ref, suspended = found
    if suspended:
        raise AccessDenied("Tenant suspended.", reason="tenant_suspended", tenant=ref.external_id)
    return ref


@revocation.on_change
def clear_cache(**_: Any) -> None:
    _by_external_id.clear()
    _by_client.clear()


for _model in (Tenant, ClientBinding):
    post_save.connect(
        revocation.changed, sender=_model, dispatch_uid=f"mcpauth-tenancy-{_model.__name__}"
    )
    post_delete.connect(
        revocation.changed, sender=_model, dispatch_uid=f"mcpauth-tenancy-del-{_model.__name__}"
    )
