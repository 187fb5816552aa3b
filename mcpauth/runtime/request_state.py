"""Multi-round-trip input (MCP 2026-07-28), governed: the ``requestState`` every worker trusts.

A body asks the client for input by returning an ``InputRequiredResult`` (FastMCP's guard
pattern); the client answers and retries the call with ``inputResponses`` and the
``requestState`` it was given, which the body reads back as ``ctx.request_state``. The MCP SDK's
:class:`~mcp.server.request_state.RequestStateBoundary`, which FastMCP installs, seals that state
on the way out and opens it on the way in (AES-256-GCM, an expiry, the method, tool or URI and
the arguments' digest, an audience). This module gives it what a multi-worker, multi-tenant
server needs, and adds what it lacks:

* **one key ring for every worker** (:func:`security`): ``MCPAUTH_REQUEST_STATE_KEYS`` (the
  first seals, all open: rotation), else a key derived from ``SECRET_KEY``; the audience is
  this resource's URL, and the TTL ``MCPAUTH_REQUEST_STATE_TTL``;
* **bound to the admitted caller** (:func:`bound_caller`): issuer, tenant (its issuer and
  external id), client and subject of the call's ``Principal``, where the SDK would take the
  (client, issuer, subject) of its own auth context;
* **single use, across workers** (:class:`RoundGuard`, inside the boundary): each sealed state
  carries a random id, which the first retry that presents it claims in the shared cache
  (``caches["default"]``, Redis with ``REDIS_URL``); a second presentation is refused;
* **rounds linked in the audit trail**: the sealed state also carries the asking round's
  ``request_id`` and number, so the row of the round that continues it names them
  (``arguments["@mcpauth"] = {"round": 2, "continues": "<request_id>"}``). Every round is
  sealed this way, also when the body set no state of its own (the body then reads ``None``);
* **refusals audited** (:class:`RefusalAudit`, around the boundary): a state that is tampered
  with, expired, another caller's, another call's or replayed is refused with the SDK's own
  error (``-32602 Invalid or expired requestState``, the reason never on the wire), and its
  row says ``invalid_request`` / ``invalid_request_state`` with the reason.

Both guards are MCP SDK server middleware, placed around and inside FastMCP's boundary by
:func:`install`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.request_state import (
    InvalidRequestState,
    RequestStateBoundary,
    RequestStateSecurity,
    compact_json,
)
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from mcp_types.methods import INPUT_REQUIRED_METHODS, is_input_required

from audit.models import Outcome
from mcpauth.conf import MCPAuthSettings, get_settings
from mcpauth.exceptions import NoPrincipal
from mcpauth.runtime.context import get_call
from mcpauth.runtime.runner import arecord

log = logging.getLogger(__name__)

#: The SDK's frozen refusal (``mcp.server.request_state._reject``): the same on every path.
REFUSAL_MESSAGE = "Invalid or expired requestState"
REFUSAL_REASON = "invalid_request_state"
#: What the sealed plaintext is: this envelope, with the body's own state inside.
_VERSION = 1
#: Seconds a claimed state id is remembered beyond the state's TTL (the SDK's future skew).
_CLAIM_MARGIN = 60
#: The refusal's real reason, for its audit row (set where it is known, read by RefusalAudit).
_refusal: ContextVar[str] = ContextVar("mcpauth_request_state_refusal", default="")


def security(conf: MCPAuthSettings | None = None) -> RequestStateSecurity:
    """The sealing policy every worker shares (see the module docstring)."""
    conf = conf or get_settings()
    return RequestStateSecurity(
        keys=list(conf.request_state_keys),
        ttl=conf.request_state_ttl,
        bind_principal=bound_caller,
        audience=conf.resource_url,
    )


def bound_caller(ctx: ServerRequestContext[Any, Any]) -> str:
    """The admitted caller a state is bound to: issuer, tenant, client, subject.

    A governed call always has a ``Principal``; without one this raises, and the SDK then
    refuses the state (or will not seal one): it never binds a state to nobody.
    """
    call = get_call()
    if call is None or call.principal is None:
        raise NoPrincipal("requestState needs an admitted caller.")
    p = call.principal
    return compact_json([p.issuer, p.tenant.issuer, p.tenant.external_id, p.client_id, p.subject])


def _refuse(reason: str) -> MCPError:
    _refusal.set(reason)
    return MCPError(code=INVALID_PARAMS, message=REFUSAL_MESSAGE, data={"reason": REFUSAL_REASON})


def _is_refusal(exc: MCPError) -> bool:
    data = exc.error.data
    return (
        exc.error.code == INVALID_PARAMS
        and isinstance(data, Mapping)
        and data.get("reason") == REFUSAL_REASON
    )


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _arguments_digest(method: str, params: Mapping[str, Any]) -> tuple[str, str]:
    """``(target, arguments digest)`` as the SDK binds a state (for a refusal's reason only)."""
    if method == "resources/read":
        return str(params.get("uri", "")), _b64u(hashlib.sha256(b"{}").digest()[:16])
    args = params.get("arguments") or {}
    digest = hashlib.sha256(compact_json(args, sort_keys=True).encode()).digest()[:16]
    return str(params.get("name", "")), _b64u(digest)


def diagnose(
    policy: RequestStateSecurity, audience: str, method: str, params: Mapping[str, Any]
) -> str:
    """Why the SDK refused a state: it keeps the reason to its log, the audit row needs it."""
    wire = params.get("requestState")
    if not isinstance(wire, str):
        return "not a string"
    try:
        claims = json.loads(policy.codec.unseal(wire))
    except InvalidRequestState:
        return "not sealed by this server's keys (tampered with, or a retired key)"
    except Exception:
        return "malformed"
    if not isinstance(claims, dict):
        return "malformed"
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or not time.time() < exp:
        return "expired"
    if claims.get("aud") != audience:
        return "sealed for another server"
    target, digest = _arguments_digest(method, params)
    if claims.get("m") != method or claims.get("t") != target or claims.get("a") != digest:
        return "issued for another call (method, tool, URI or arguments)"
    return "issued to another caller"


class RefusalAudit:
    """Around the SDK's boundary: a refused ``requestState`` gets its audit row."""

    def __init__(self, policy: RequestStateSecurity, audience: str) -> None:
        self._policy = policy
        self._audience = audience

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if (
            ctx.method not in INPUT_REQUIRED_METHODS
            or not ctx.params
            or ctx.params.get("requestState") is None
        ):
            return await call_next(ctx)
        token = _refusal.set("")
        try:
            return await call_next(ctx)
        except MCPError as exc:
            if _is_refusal(exc):
                reason = _refusal.get() or diagnose(
                    self._policy, self._audience, ctx.method, ctx.params
                )
                await _record_refusal(reason)
            raise
        finally:
            _refusal.reset(token)


async def _record_refusal(reason: str) -> None:
    call = get_call()
    if call is None or call.recorded or call.tool_ran:
        return
    await arecord(
        call,
        Outcome.INVALID_REQUEST,
        code=REFUSAL_REASON,
        message=f"requestState refused: {reason}.",
    )


def _claim(state_id: str, ttl: float) -> bool:
    """Claim a state's id in the shared cache; ``False`` when it was claimed before."""
    return bool(
        caches["default"].add(
            f"mcpauth:request-state:{state_id}", 1, timeout=math.ceil(ttl) + _CLAIM_MARGIN
        )
    )


class RoundGuard:
    """Inside the SDK's boundary: the round envelope, single use, and the audit links.

    Outgoing, an ``input_required`` result's state (the body's own, or none) is wrapped in an
    envelope with a fresh random id, the asking round's ``request_id`` and its number, which the
    boundary then seals. Incoming (already opened and verified by the boundary), the envelope's
    id is claimed in the shared cache (a second use is refused), the call is linked to the round
    it continues, and the body sees its own state again.
    """

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method not in INPUT_REQUIRED_METHODS:
            return await call_next(ctx)
        rounds = 1
        params = ctx.params or {}
        if params.get("requestState") is not None:
            envelope = self._open(params["requestState"])
            try:
                claimed = await sync_to_async(_claim, thread_sensitive=False)(
                    envelope["j"], self._ttl
                )
            except Exception:
                log.exception("the single-use check of a requestState failed")
                raise MCPError(code=INTERNAL_ERROR, message="Internal error") from None
            if not claimed:
                raise _refuse("already used (a replay)")
            rounds = envelope["n"] + 1
            call = get_call()
            if call is not None:
                call.link(round=rounds, continues=envelope["r"])
            ctx = replace(ctx, params={**params, "requestState": envelope["s"]})
        result = await call_next(ctx)
        if not is_input_required(result):
            return result
        return self._wrap(result, rounds)

    @staticmethod
    def _open(plaintext: Any) -> dict[str, Any]:
        try:
            envelope = json.loads(plaintext)
        except (TypeError, ValueError):
            envelope = None
        if (
            not isinstance(envelope, dict)
            or envelope.get("v") != _VERSION
            or not isinstance(envelope.get("j"), str)
            or not isinstance(envelope.get("r"), str)
            or not isinstance(envelope.get("n"), int)
            or not isinstance(envelope.get("s"), str | None)
        ):
            # sealed with this server's keys and audience, yet not by this guard
            raise _refuse("not a round of this server")
        return envelope

    @staticmethod
    def _wrap(result: HandlerResult, rounds: int) -> HandlerResult:
        call = get_call()
        if call is None:
            raise MCPError(code=INTERNAL_ERROR, message="Internal error")
        if isinstance(result, Mapping):
            state = result.get("requestState")
        else:
            state = getattr(result, "request_state", None)
        if state is not None and not isinstance(state, str):
            return result  # nothing the boundary would seal either
        envelope = compact_json(
            {
                "v": _VERSION,
                "j": secrets.token_urlsafe(16),
                "r": call.request_id,
                "n": rounds,
                "s": state,
            }
        )
        if isinstance(result, Mapping):
            return {**result, "requestState": envelope}
        assert result is not None  # is_input_required: a model, then
        return result.model_copy(update={"request_state": envelope})


def install(
    server: Server[Any], policy: RequestStateSecurity, conf: MCPAuthSettings | None = None
) -> None:
    """Put the two guards around and inside the ``RequestStateBoundary`` that FastMCP installed
    with ``policy`` (``FastMCP(request_state_security=policy)``)."""
    conf = conf or get_settings()
    middleware = server.middleware
    positions = [i for i, m in enumerate(middleware) if isinstance(m, RequestStateBoundary)]
    if len(positions) != 1:
        raise RuntimeError("FastMCP's low-level server has no single RequestStateBoundary")
    at = positions[0]
    middleware[at : at + 1] = [
        RefusalAudit(policy, conf.resource_url),
        middleware[at],
        RoundGuard(policy.ttl),
    ]
