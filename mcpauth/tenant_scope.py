"""The tenant a governed body's database work is confined to (a leaf module: imports nothing).

While a governed tool body runs, :func:`confined` binds the admitted tenant's primary key to a
context variable. Everything that touches tenant-owned rows reads it:

* on PostgreSQL, ``mcpauth.rls`` switches the connection to the restricted role with the tenant
  set before any query of the body runs, so row-level security confines every statement (ORM,
  ``raw()``, ``cursor.execute()``);
* on every database, the ``TenantOwned`` managers, ``save()`` and ``delete()`` confine and check
  what the ORM can see (``mcpauth.managers``, ``mcpauth.models``).

The variable follows the call into FastMCP's worker thread and into ``sync_to_async`` (both copy
the context), and is unset everywhere else: the admin, commands, migrations and the platform's
own work (admission, audit) run with cross-tenant access, as the database role they connect as.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_tenant: ContextVar[int | None] = ContextVar("mcpauth_db_tenant", default=None)


def active_tenant() -> int | None:
    """The primary key of the tenant the running body is confined to, or ``None``."""
    return _tenant.get()


@contextmanager
def confined(tenant_id: int) -> Iterator[int]:
    """Confine the database work inside the block to ``tenant_id``."""
    if not isinstance(tenant_id, int) or isinstance(tenant_id, bool):
        raise TypeError("confined() takes a tenant's integer primary key")
    token = _tenant.set(tenant_id)
    try:
        yield tenant_id
    finally:
        _tenant.reset(token)


@contextmanager
def platform() -> Iterator[None]:
    """Run the block as the platform, not confined to the body's tenant.

    For the platform's own reads while a body runs (a downstream's stored secret, read when the
    tool's client sends a request): the tables read here are not the tenant's, and on
    PostgreSQL the restricted role has no privilege on them at all.
    """
    token = _tenant.set(None)
    try:
        yield
    finally:
        _tenant.reset(token)
