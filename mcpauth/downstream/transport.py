"""The httpx transports behind ``downstream.client()`` and ``downstream.async_client()``.

Every request the tool's client sends passes here, and only here:

1. it must stay on the downstream's origin and under its base path (a redirect or an absolute
   URL elsewhere is refused), and must not carry the caller's own bearer token in its URL,
   headers or (non-streamed) body (token passthrough is refused, whatever way the tool got hold
   of it);
2. the credential for the current caller is resolved (:mod:`.credentials`) and set on a *copy*
   of the request: the tool's request and ``response.request`` never show it;
3. the request is sent with the downstream's timeouts; on SQLite a sync tool's empty
   transaction is released for the wait (:mod:`.sqlite`);
4. one outbound audit row is noted (:mod:`.records`), whatever happened.

The connection pool underneath is the process's, one per downstream origin (and event loop, for
async clients): a tool's client costs no TLS context of its own and reuses kept-alive connections.
Only headers carry credentials, set per request, so sharing connections shares nothing else.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import TYPE_CHECKING

import httpx2
from asgiref.sync import sync_to_async

from mcpauth.downstream import caller, credentials, records, sqlite
from mcpauth.downstream.errors import (
    CredentialUnavailable,
    DownstreamError,
    DownstreamRefused,
    DownstreamUnavailable,
)
from mcpauth.runtime.context import refresh_connections

if TYPE_CHECKING:
    from mcpauth.downstream.conf import Downstream
    from mcpauth.runtime.context import CallContext


Origin = tuple[str, str, int]
#: Connection pools per downstream origin (and event loop): they hold connections, no
#: credentials, and their number is bounded by the declared origins.
_pools: dict[Origin, httpx2.HTTPTransport] = {}
_async_pools: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Origin, httpx2.AsyncHTTPTransport]
] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def _pool(ds: Downstream) -> httpx2.HTTPTransport:
    pool = _pools.get(ds.origin)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(ds.origin)
            if pool is None:
                pool = _pools[ds.origin] = httpx2.HTTPTransport(retries=0, trust_env=False)
    return pool


def _async_pool(ds: Downstream) -> httpx2.AsyncHTTPTransport:
    pools = _async_pools.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get(ds.origin)
    if pool is None:
        pool = pools[ds.origin] = httpx2.AsyncHTTPTransport(retries=0, trust_env=False)
    return pool


def _host(url: httpx2.URL) -> str:
    host = url.host or ""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{url.port}" if url.port else shown


def _origin(url: httpx2.URL) -> tuple[str, str, int]:
    scheme = url.scheme.lower()
    return (
        scheme,
        (url.host or "").lower().rstrip("."),
        url.port or (443 if scheme == "https" else 80),
    )


def _escapes(path: str, prefix: str) -> bool:
    if not (path if path.endswith("/") else path + "/").startswith(prefix):
        return True
    segments = path.lower().replace("%2e", ".").split("/")
    return any(s in (".", "..") for s in segments)


class Binding:
    """One client's downstream, caller and credential (shared by both transports)."""

    def __init__(self, downstream: Downstream, call: CallContext) -> None:
        self.downstream = downstream
        self.call = call
        self._credential: credentials.Credential | None = None

    def begin(self, request: httpx2.Request) -> records.Outbound:
        """The request's audit entry; raise :class:`DownstreamRefused` (noted) if refused."""
        ds = self.downstream
        entry = records.Outbound(
            downstream=ds.name,
            auth=ds.kind,
            http_method=request.method,
            host=_host(request.url),
            path=request.url.path,
            at_ms=self.call.elapsed_ms(),
        )
        refusal: DownstreamRefused | None = None
        if _origin(request.url) != ds.origin or _escapes(request.url.path, ds.path_prefix):
            refusal = DownstreamRefused(
                f"Downstream {ds.name!r} only reaches {ds.url}: a request elsewhere is refused.",
                code="origin_refused",
            )
        elif self._carries_caller_token(request):
            refusal = DownstreamRefused(
                "The request carries the caller's own token: token passthrough is refused. "
                "Declare the downstream's auth (api_key, client_credentials, token_exchange, "
                "or forward) instead.",
                code="token_passthrough",
            )
        if refusal is not None:
            self.failed(entry, refusal, time.perf_counter())
            raise refusal
        return entry

    @staticmethod
    def _carries_caller_token(request: httpx2.Request) -> bool:
        raw = caller.raw_token()
        if not raw:
            return False
        if raw in str(request.url) or any(raw in value for value in request.headers.values()):
            return True
        if isinstance(request.stream, httpx2.ByteStream):  # a body given in full (not streamed)
            return raw.encode() in request.content
        return False

    def memo(self) -> credentials.Credential | None:
        """The credential this client already resolved, while it is fresh."""
        cached = self._credential
        return cached if cached is not None and cached.fresh() else None

    def credential(self) -> credentials.Credential:
        """The memoised credential while fresh, else a new one (sync: may do I/O)."""
        cached = self.memo()
        if cached is None:
            cached = self._credential = credentials.resolve(self.downstream, self.call)
        return cached

    def credential_in_thread(self) -> credentials.Credential:
        refresh_connections()
        return self.credential()

    @staticmethod
    def wire(request: httpx2.Request, credential: credentials.Credential) -> httpx2.Request:
        """A copy of ``request`` with the credential set (the tool's request stays as it was)."""
        headers = request.headers.copy()
        for name, value in credential.headers:
            headers[name] = value
        return httpx2.Request(
            request.method,
            request.url,
            headers=headers,
            stream=request.stream,
            extensions=request.extensions,
        )

    def done(self, entry: records.Outbound, status: int, started: float) -> bool:
        entry.status = status
        entry.outcome = records.outcome_for_status(status)
        if status >= 400:
            entry.error_code = f"http_{status}"
        entry.duration_ms = (time.perf_counter() - started) * 1000
        return records.add(self.call, entry)

    def failed(self, entry: records.Outbound, exc: DownstreamError, started: float) -> bool:
        entry.status = exc.status
        entry.outcome = exc.record_outcome
        entry.error_code = exc.code or type(exc).__name__
        entry.error_message = str(exc)
        entry.duration_ms = (time.perf_counter() - started) * 1000
        return records.add(self.call, entry)


def _unavailable(
    binding: Binding, exc: httpx2.TransportError, request: httpx2.Request
) -> DownstreamUnavailable:
    name = binding.downstream.name
    if isinstance(exc, httpx2.TimeoutException):
        return DownstreamUnavailable(
            f"Downstream {name!r} did not answer in time ({type(exc).__name__}).",
            code="timeout",
            request=request,
        )
    return DownstreamUnavailable(
        f"Downstream {name!r} could not be reached ({type(exc).__name__}).",
        code="unreachable",
        request=request,
    )


def _internal(exc: Exception) -> CredentialUnavailable:
    return CredentialUnavailable(
        f"The credential could not be obtained ({type(exc).__name__}).", code="internal_error"
    )


class SyncTransport(httpx2.BaseTransport):
    def __init__(self, binding: Binding) -> None:
        self.binding = binding
        self.inner = _pool(binding.downstream)

    def _note(self, noted_late: bool) -> None:
        if noted_late:  # the call's own row is written already: this one is written now
            records.flush_remaining(self.binding.call)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        binding = self.binding
        try:
            entry = binding.begin(request)
        except DownstreamRefused:
            self._note(binding.call.recorded)
            raise
        started = time.perf_counter()
        try:
            with sqlite.released(binding.call.tool, binding.downstream.name) as held:
                entry.write_lock_held = held
                try:
                    credential = binding.credential()
                except DownstreamError:
                    raise
                except Exception as exc:
                    self._note(binding.failed(entry, _internal(exc), started))
                    raise
                entry.obtained = credential.obtained
                response = self.inner.handle_request(binding.wire(request, credential))
                if held is False:
                    response.read()  # the whole wait happens while the lock is released
        except DownstreamError as exc:
            self._note(binding.failed(entry, exc, started))
            raise
        except httpx2.TransportError as exc:
            error = _unavailable(binding, exc, request)
            self._note(binding.failed(entry, error, started))
            raise error from None
        self._note(binding.done(entry, response.status_code, started))
        return response

    def close(self) -> None:
        """The pool is the process's: closing a tool's client keeps it."""


class AsyncTransport(httpx2.AsyncBaseTransport):
    def __init__(self, binding: Binding) -> None:
        self.binding = binding

    async def _note(self, noted_late: bool) -> None:
        if noted_late:
            await sync_to_async(records.flush_remaining, thread_sensitive=False)(self.binding.call)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        binding = self.binding
        try:
            entry = binding.begin(request)
        except DownstreamRefused:
            await self._note(binding.call.recorded)
            raise
        started = time.perf_counter()
        try:
            credential = binding.memo()
            if credential is None:
                # database, cache and token endpoint: in a worker thread, off the event loop
                try:
                    credential = await sync_to_async(
                        binding.credential_in_thread, thread_sensitive=False
                    )()
                except DownstreamError:
                    raise
                except Exception as exc:
                    await self._note(binding.failed(entry, _internal(exc), started))
                    raise
            entry.obtained = credential.obtained
            pool = _async_pool(binding.downstream)
            response = await pool.handle_async_request(binding.wire(request, credential))
        except DownstreamError as exc:
            await self._note(binding.failed(entry, exc, started))
            raise
        except httpx2.TransportError as exc:
            error = _unavailable(binding, exc, request)
            await self._note(binding.failed(entry, error, started))
            raise error from None
        await self._note(binding.done(entry, response.status_code, started))
        return response

    async def aclose(self) -> None:
        """The pool is the process's (per event loop): closing a tool's client keeps it."""
