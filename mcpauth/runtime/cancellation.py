"""A client that gives up: a disconnect, or ``notifications/cancelled`` from any worker.

While a governed call (``tools/call``, ``resources/read``, ``prompts/get``) runs,
:class:`watching` keeps watch beside it (timers, then a wait on the server's ``receive``, for
calls that live long enough to need one) and stops the call when its client gives up:

* **the client went away** (it closed the connection: a timeout, a crash, or the 2026-07-28
  way to cancel, closing the request's stream): the call's cancel scope is cancelled, as the
  MCP SDK's SSE transport cancels its handler. An async body is interrupted at its next
  ``await``; a sync body's thread cannot be, and runs to its end;
* **``notifications/cancelled``** (the handshake era's way; on 2026-07-28 a posted one is
  acknowledged and dropped, as by the SDK, since closing the stream is the cancel there): the
  notification is a POST of its own, answered by whichever worker gets it, with no session to
  find the call in. It is matched to the call by the admitted caller (issuer, tenant, client,
  subject) and the JSON-RPC id it names, through the shared cache (``caches["default"]``, Redis with
  ``REDIS_URL``): :func:`announce` marks the call cancelled, and the call's watcher, which
  looks every :data:`POLL_SECONDS` once the call has run :data:`FIRST_POLL_SECONDS`, stops it.
  A call registers itself (``request_id`` under its caller and id) only when it lives that
  long, so short calls never touch the cache; a cancel that arrives before then is remembered
  for :data:`EARLY_CANCEL_SECONDS` under the caller and id, and caught by the first look.

The call's audit row says ``cancelled`` (``mcpauth.runtime.transport`` settles it), the
notification's row names the call it cancelled (``arguments["@mcpauth"]["cancels"]``, when the call
was registered) and the call's row names the notification (``cancelled_by``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
from asgiref.sync import sync_to_async
from django.core.cache import caches
from mcp.server.request_state import compact_json
from mcp.server.streamable_http import REQUEST_CANCELLED
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp_types import ErrorData, JSONRPCError

from audit.models import Outcome
from mcpauth.identity.tokens import Principal
from mcpauth.runtime.context import CallContext
from mcpauth.runtime.runner import DISCONNECTED, arecord, status_of
from mcpauth.runtime.streaming import ReplyStream
from mcpauth.types import Receive

log = logging.getLogger(__name__)

#: The methods that run a governed body: the ones a client can give up on.
WATCHED = frozenset({"tools/call", "resources/read", "prompts/get"})
NOTIFIED = "notifications/cancelled"
#: A call starts listening for its client's disconnect after this many seconds.
LISTEN_AFTER_SECONDS = 0.05
#: A call registers itself, and first looks for a cancel, after this many seconds.
FIRST_POLL_SECONDS = 0.2
#: Then it looks this often.
POLL_SECONDS = 0.25
#: How long a cancel for a call not (yet) registered is kept.
EARLY_CANCEL_SECONDS = 5
#: The most a registration or a cancel is kept (a call longer than this is not cancellable).
KEEP_SECONDS = 3600


def _caller(principal: Principal, rpc_id: Any) -> str:
    """The (caller, JSON-RPC id) a call is found by: ids are the client's, so never alone."""
    who = compact_json(
        [
            principal.issuer,
            principal.tenant.issuer,
            principal.tenant.external_id,
            principal.client_id,
            principal.subject,
            json.dumps(rpc_id),  # "1" and 1 are different ids
        ]
    )
    return hashlib.sha256(who.encode()).hexdigest()[:40]


def _keys(call: CallContext) -> tuple[str, str, str]:
    """``(registration, cancel, early cancel)`` keys of a call."""
    assert call.principal is not None
    caller = _caller(call.principal, call.rpc_id)
    return (
        f"mcpauth:call:{caller}",
        f"mcpauth:cancel:{call.request_id}",
        f"mcpauth:cancel-early:{caller}",
    )


def _look(call: CallContext, register: bool) -> str | None:
    """The ``request_id`` of the notification that cancelled ``call``, if one did (sync)."""
    cache = caches["default"]
    registration, cancel, early = _keys(call)
    if register:
        cache.set(registration, call.request_id, timeout=KEEP_SECONDS)
    found = cache.get_many([cancel, early])
    value = found.get(cancel) or found.get(early)
    return str(value) if value else None


def disconnect_probe(receive: Receive) -> Callable[[], bool] | None:
    """Whether the client is gone, asked without waiting: uvicorn's request cycle (whose
    ``receive`` this is) keeps a ``disconnected`` flag. ``None`` under a server without one,
    where only a call that lives :data:`LISTEN_AFTER_SECONDS` notices a disconnect."""
    cycle: Any = getattr(receive, "__self__", None)
    if not isinstance(getattr(cycle, "disconnected", None), bool):
        return None
    return lambda: bool(cycle.disconnected)


def _forget(call: CallContext) -> None:
    caches["default"].delete(_keys(call)[0])


def announce(principal: Principal, rpc_id: Any, notification_request_id: str) -> str | None:
    """Cancel the caller's call with JSON-RPC id ``rpc_id``; its ``request_id`` if it is
    registered (it is stopped within a poll), else ``None`` (caught if it registers soon)."""
    cache = caches["default"]
    caller = _caller(principal, rpc_id)
    target = cache.get(f"mcpauth:call:{caller}")
    if target:
        cache.set(f"mcpauth:cancel:{target}", notification_request_id, timeout=KEEP_SECONDS)
        return str(target)
    cache.set(
        f"mcpauth:cancel-early:{caller}", notification_request_id, timeout=EARLY_CANCEL_SECONDS
    )
    return None


async def notified(call: CallContext) -> None:
    """A handshake-era ``notifications/cancelled``: cancel the call it names, link the two."""
    params = (call.message or {}).get("params")
    rpc_id = cancelled_request_id_from_params(params if isinstance(params, dict) else None)
    if call.principal is None or rpc_id is None:
        return
    target = await sync_to_async(announce, thread_sensitive=False)(
        call.principal, rpc_id, call.request_id
    )
    call.link(cancels=target, rpc_id=rpc_id)


class watching:
    """Run the block as a call its client can give up on (see the module docstring).

    Cheap for the calls that end quickly, which are most: a cancel scope and timers. Only a call
    that runs :data:`LISTEN_AFTER_SECONDS` starts awaiting the server's ``receive`` for a
    disconnect (and, on the handshake era, :data:`FIRST_POLL_SECONDS` polling the cache); a
    quicker one is asked at the end, by the runner before its row is written, whether its client
    is still there (:func:`disconnect_probe`).
    """

    __slots__ = ("_pending", "_poller", "_timers", "call", "poll", "receive", "scope", "stream")

    def __init__(
        self, call: CallContext, receive: Receive, stream: ReplyStream, *, handshake_era: bool
    ) -> None:
        self.call = call
        self.receive = receive
        self.stream = stream
        self.poll = handshake_era and call.principal is not None and call.rpc_id is not None
        self.scope = anyio.CancelScope()
        self._pending: asyncio.Future[Any] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._poller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self.scope.__enter__()
        self.call.client_gone = disconnect_probe(self.receive)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(LISTEN_AFTER_SECONDS, self._listen))
        if self.poll:
            self._timers.append(loop.call_later(FIRST_POLL_SECONDS, self._start_polling))

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        for timer in self._timers:
            timer.cancel()
        if self._pending is not None:
            self._pending.cancel()
        if self._poller is not None:
            self._poller.cancel()
        return self.scope.__exit__(*exc_info)

    def _listen(self) -> None:
        self._pending = asyncio.ensure_future(self.receive())
        self._pending.add_done_callback(self._received)

    def _received(self, pending: asyncio.Future[Any]) -> None:
        if pending.cancelled() or pending.exception() is not None:
            return
        if pending.result().get("type") != "http.disconnect":
            self._listen()  # (nothing else should come once the body is read)
        elif not self.stream.finished:  # a complete response reads as a disconnect too
            self._cancel(DISCONNECTED)

    def _cancel(self, why: str) -> None:
        if not self.call.cancelled:
            self.call.cancelled = why
            self.scope.cancel()

    def _start_polling(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._polling())

    async def _polling(self) -> None:
        call = self.call
        try:
            by = await sync_to_async(_look, thread_sensitive=False)(call, True)
            try:
                while not by:
                    await asyncio.sleep(POLL_SECONDS)
                    by = await sync_to_async(_look, thread_sensitive=False)(call, False)
            finally:
                # the call is over, or cancelled: its registration goes (nobody waits for it)
                asyncio.get_running_loop().run_in_executor(None, _forget, call)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not look for a cancel of this call; no longer looking")
            return
        call.link(cancelled_by=by)
        self._cancel(NOTIFIED)


async def settle(call: CallContext, stream: ReplyStream, *, handshake_era: bool) -> None:
    """A call whose client gave up: its ``cancelled`` row, and the end of its reply."""
    if not call.recorded:
        who = "went away" if call.cancelled == DISCONNECTED else "cancelled the call"
        message = (
            f"The client {who} while the body ran; the body was stopped (an async body's "
            "writes so far stand)."
            if call.tool_ran
            else f"The client {who} before the body ran."
        )
        await arecord(
            call, Outcome.CANCELLED, code=call.cancelled, message=message, status=status_of(call)
        )
    if stream.finished:
        return
    if call.cancelled == DISCONNECTED or not handshake_era:
        await stream.end(status_of(call))  # nobody reads it
        return
    # still connected (handshake era): the SDK's 2025-era transport ends a cancelled request's
    # stream with this error, where its dispatcher stays silent
    error = JSONRPCError(
        jsonrpc="2.0",
        id=call.rpc_id,
        error=ErrorData(code=REQUEST_CANCELLED, message="Request cancelled"),
    )
    await stream.reply(error.model_dump_json(by_alias=True, exclude_unset=True).encode(), 200)
