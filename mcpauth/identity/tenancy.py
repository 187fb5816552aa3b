"""Which tenant a verified token belongs to. Exactly one, or the call is refused.

Everything is looked up within the token's issuer (``VerifiedToken.issuer``):

1. the claim named by ``MCPAUTH_TENANT_CLAIM`` (default ``oid``, Scalekit's organisation id):
   the issuer's tenant with that external id, else an operator's
   :class:`~mcpauth.models.TenantAlias` for (issuer, claim value);
2. else an admin-managed :class:`~mcpauth.models.ClientBinding` for (issuer, ``client_id``);
3. else 403. There is never a shared default tenant.

Unknown tenants are created on first sight, for the token's issuer, unless
``MCPAUTH_AUTO_PROVISION_TENANTS`` is off. The same claim value from another issuer is another
tenant. A suspended tenant is refused with 403.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save

from mcpauth.caching import revocation
from mcpauth.caching.localcache import TTLCache, require_io
from mcpauth.conf import get_settings
from mcpauth.exceptions import AccessDenied, InvalidToken
from mcpauth.models import ClientBinding, Tenant, TenantAlias
from mcpauth.values import TenantRef, VerifiedToken

_ttl = lambda: get_settings().cache_ttl  # noqa: E731
#: (issuer, external_id) -> (TenantRef, suspended) or None
_by_external_id: TTLCache[tuple[TenantRef, bool] | None] = TTLCache(_ttl)
#: (issuer, client_id) -> (TenantRef, suspended) or None
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


_TENANT_VALUES = ("tenant_id", "tenant__external_id", "tenant__issuer", "tenant__suspended")


def _ref(row: dict[str, Any]) -> tuple[TenantRef, bool]:
    return (
        TenantRef(row["tenant_id"], row["tenant__external_id"], row["tenant__issuer"]),
        row["tenant__suspended"],
    )


def _load_tenant(issuer: str, external_id: str) -> tuple[TenantRef, bool] | None:
    row = (
        Tenant.objects.filter(issuer=issuer, external_id=external_id)
        .values("id", "suspended")
        .first()
    )
    if row is not None:
        return TenantRef(row["id"], external_id, issuer), row["suspended"]
    alias = (
        TenantAlias.objects.filter(issuer=issuer, external_id=external_id)
        .values(*_TENANT_VALUES)
        .first()
    )
    return _ref(alias) if alias is not None else None


def _load_binding(issuer: str, client_id: str) -> tuple[TenantRef, bool] | None:
    row = (
        ClientBinding.objects.filter(issuer=issuer, client_id=client_id)
        .values(*_TENANT_VALUES)
        .first()
    )
    return _ref(row) if row is not None else None


def resolve(token: VerifiedToken) -> TenantRef:
    conf = get_settings()
    issuer = token.issuer
    external_id = _claim_value(token.claims, conf.tenant_claim)
    if external_id is not None:
        key = (issuer, external_id)
        found = _by_external_id.get_or_load(key, lambda: _load_tenant(issuer, external_id))
        if found is None:
            if not conf.auto_provision_tenants:
                raise AccessDenied("Unknown tenant.", reason="unknown_tenant")
            require_io()
            tenant, _ = Tenant.objects.get_or_create(
                issuer=issuer, external_id=external_id, defaults={"name": external_id}
            )
            found = (TenantRef(tenant.pk, external_id, issuer), tenant.suspended)
            _by_external_id.put(key, found)  # after the save signal cleared the cache
    else:
        key = (issuer, token.client_id)
        found = _by_client.get_or_load(key, lambda: _load_binding(issuer, token.client_id))
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


for _model in (Tenant, TenantAlias, ClientBinding):
    post_save.connect(
        revocation.changed, sender=_model, dispatch_uid=f"mcpauth-tenancy-{_model.__name__}"
    )
    post_delete.connect(
        revocation.changed, sender=_model, dispatch_uid=f"mcpauth-tenancy-del-{_model.__name__}"
    )
