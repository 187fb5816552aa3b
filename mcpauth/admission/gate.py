"""Admission: steps 3-5 of a ``/mcp`` request (:mod:`mcpauth.edge.pipeline` runs them).

The bearer token is verified (:func:`mcpauth.identity.tokens.verify`) and turned into the
caller's tenant and permissions, the client's policy and rate limit are applied, and a call
naming a tool, resource or prompt is authorized against its permissions. :func:`admit` does it
in a worker thread; :func:`admit_on_loop` first tries it without leaving the event loop, when
everything it needs is cached.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.exceptions import SynchronousOnlyOperation

from mcpauth.admission import floods, ratelimit
from mcpauth.caching import revocation
from mcpauth.caching.localcache import CacheMiss, cache_only
from mcpauth.conf import MCPAuthSettings
from mcpauth.exceptions import InsufficientScope, MCPAuthError, MissingToken
from mcpauth.identity import scopes
from mcpauth.identity.tokens import principal_for, verify
from mcpauth.observability import request as observe
from mcpauth.observability.tracing import step
from mcpauth.runtime.context import CallContext
from mcpauth.values import Principal


def admit(ctx: CallContext, raw: str | None, conf: MCPAuthSettings) -> Principal:
    """Steps 3-5 (sync: may touch the DB, cache and JWKS). Fills ``ctx``.

    The per-IP refusal budget (``mcpauth.admission.floods``) is not consulted here: a valid token is
    admitted whatever other requests from its address did. From an address over its budget, a
    token is still checked, but an unknown key id triggers no JWKS refetch.
    """
    observe.admission_redone(ctx)
    ctx.refresh_db()
    revocation.check()
    if raw is None:
        raise MissingToken(scopes=scopes.challenge_scopes())
    with step("mcp.token"):
        token = verify(raw, refetch=floods.throttled(ctx.client_ip) is None)
    ctx.token = token
    try:
        with step("mcp.tenant_scope"):
            principal = principal_for(token)
    except MCPAuthError as exc:
        ctx.tenant = exc.tenant
        raise
    ctx.principal = principal
    with step("mcp.rate_limit"):
        if not ctx.is_notification and ctx.http_method == "POST":
            ctx.usage = ratelimit.hit(principal)
        else:
            ratelimit.rate_for(principal)  # a blocked client is refused on every request
    if ctx.parse_error is None and not ctx.is_notification:
        authorize(ctx, principal)  # here, in a thread: the challenge may read the scope map
    return principal


async def admit_on_loop(ctx: CallContext, raw: str | None) -> bool:
    """:func:`admit` without leaving the event loop, when nothing it needs takes I/O.

    The common case (a token already verified, its tenant, scopes and client policy cached, the
    count in Redis or in process) costs a thread hop less this way. Anything that would need a
    database query, a JWKS fetch or a blocking cache raises ``CacheMiss`` inside
    :func:`~mcpauth.caching.localcache.cache_only` before anything is counted, and so does any
    refusal before the count: the caller then runs :func:`admit` in a thread, which decides it all
    again (and a refusal is then recorded exactly as on that path). Returns whether it admitted.
    """
    if raw is None or ctx.is_notification or ctx.http_method != "POST":
        return False
    try:
        with cache_only():
            revocation.check()  # due every half second: then the thread path reads it
            with step("mcp.token"):
                token = verify(raw)
            with step("mcp.tenant_scope"):
                principal = principal_for(token)
            # the policy is cached, or CacheMiss; counted with this very rate below, so a cache
            # cleared meanwhile (a config change) cannot turn the count into a CacheMiss
            rate = ratelimit.rate_for(principal)
    except (CacheMiss, MCPAuthError, SynchronousOnlyOperation):
        return False
    ctx.token = token
    ctx.principal = principal  # a refusal of the count below is recorded with the caller
    try:
        with cache_only(), step("mcp.rate_limit"):
            # refusals from here on are final; a CacheMiss comes before anything is counted
            ctx.usage = await ratelimit.ahit(principal, rate)
    except CacheMiss:
        return False  # admit() in a thread decides again (and sets the caller again)
    spec = ctx.component
    if (
        spec is not None
        and ctx.parse_error is None
        and not ctx.is_notification
        and not principal.has_perms(spec.permissions)
    ):
        # the step-up challenge reads the scope map: build it where I/O is allowed
        await sync_to_async(authorize, thread_sensitive=False)(ctx, principal)
    return True


def authorize(ctx: CallContext, principal: Principal) -> None:
    """The tool, resource or prompt the call names needs permissions the caller lacks: 403
    with the ``insufficient_scope`` step-up challenge naming the scopes that would grant them.

    A call naming nothing registered passes (an unknown tool was refused while parsing; an
    unknown resource or prompt gets FastMCP's own not-found error).
    """
    spec = ctx.component
    if spec is not None and not principal.has_perms(spec.permissions):
        needed = scopes.scopes_for(spec.permissions)
        raise InsufficientScope(
            f"The '{spec.key}' {spec.kind} needs scope: {' '.join(needed) or '(none mapped)'}.",
            scopes=needed,
        )
