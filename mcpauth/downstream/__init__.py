"""Call other systems from a tool, with the right credential and an audit row per call.

Inside a governed tool (sync or async)::

    from mcpauth import downstream

    @tool(permissions=["crm.view_contact"], read_only=True)
    def find_contact(email: str) -> dict:
        with downstream.client("crm") as crm:          # httpx2.Client (httpx's API)
            return crm.get("/contacts", params={"email": email}).json()

    @tool(permissions=["crm.view_contact"], read_only=True)
    async def find_contact_async(email: str) -> dict:
        async with downstream.async_client("crm") as crm:   # httpx2.AsyncClient
            return (await crm.get("/contacts", params={"email": email})).json()

The client is bound to the downstream declared as ``MCPAUTH_DOWNSTREAMS["crm"]``: its base URL
(requests elsewhere are refused), its timeouts, and its credential for the current caller
(``api_key``, ``client_credentials``, ``token_exchange`` or ``forward``, see
:mod:`mcpauth.downstream.credentials`). The credential never appears on the client, the request
or the response the tool sees; the caller's own bearer token is not visible to tools at all.
Every request becomes an outbound audit row linked to the tool call
(:mod:`mcpauth.downstream.records`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcpauth.downstream.errors import (
    CredentialRefused,
    CredentialUnavailable,
    DownstreamError,
    DownstreamRefused,
    DownstreamUnavailable,
    NotDeclared,
)

if TYPE_CHECKING:
    import httpx2

    from mcpauth.downstream.conf import Downstream
    from mcpauth.runtime.context import CallContext

__all__ = [
    "CredentialRefused",
    "CredentialUnavailable",
    "DownstreamError",
    "DownstreamRefused",
    "DownstreamUnavailable",
    "NotDeclared",
    "async_client",
    "client",
]

#: Client options the platform decides (the downstream's binding): a tool may not pass them.
_RESERVED = frozenset(
    {"base_url", "transport", "mounts", "auth", "proxy", "trust_env", "verify", "cert", "app"}
)


def _bind(name: str, options: dict[str, Any]) -> tuple[Downstream, CallContext, dict[str, Any]]:
    import httpx2

    from mcpauth.downstream.conf import get_settings
    from mcpauth.exceptions import NoPrincipal
    from mcpauth.runtime.context import current_call

    reserved = sorted(_RESERVED & set(options))
    if reserved:
        raise TypeError(f"downstream clients do not take {', '.join(reserved)}")
    ds = get_settings().downstreams.get(name)
    if ds is None:
        raise NotDeclared(f"Downstream {name!r} is not declared in MCPAUTH_DOWNSTREAMS.")
    call = current_call()
    if call.principal is None:
        raise NoPrincipal("A downstream client needs an admitted caller.")
    kwargs: dict[str, Any] = {
        "timeout": httpx2.Timeout(ds.timeout, connect=ds.connect_timeout),
        "follow_redirects": False,
        **options,
    }
    return ds, call, kwargs


def client(name: str, **options: Any) -> httpx2.Client:
    """A sync ``httpx2.Client`` bound to downstream ``name`` for the current caller.

    ``options`` are ``httpx2.Client``'s (``headers``, ``params``, ``timeout``,
    ``follow_redirects`` ...), except what binds it (base URL, transport, auth, proxies, TLS).
    Use it as a context manager, within the tool call.
    """
    import httpx2

    from mcpauth.downstream.transport import Binding, SyncTransport

    ds, call, kwargs = _bind(name, options)
    return httpx2.Client(
        base_url=ds.url, transport=SyncTransport(Binding(ds, call)), trust_env=False, **kwargs
    )


def async_client(name: str, **options: Any) -> httpx2.AsyncClient:
    """:func:`client` for async tools: an ``httpx2.AsyncClient``."""
    import httpx2

    from mcpauth.downstream.transport import AsyncTransport, Binding

    ds, call, kwargs = _bind(name, options)
    return httpx2.AsyncClient(
        base_url=ds.url, transport=AsyncTransport(Binding(ds, call)), trust_env=False, **kwargs
    )
