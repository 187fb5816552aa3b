"""A pipelined Redis connection for the one command every ``/mcp`` request sends on the loop.

Admission on the event loop (``mcpauth.admission.gate.admit_on_loop``) counts each call with one
script call. redis-py's asyncio client spends about 65 µs of CPU on it under load (a pool
checkout, a lock, command packing and parsing in Python for every call); this connection spends
about 10 µs (``make bench`` measures both): one TCP connection per event loop, concurrent calls
written back to back without waiting (RESP replies come back in order), one reader task that
resolves them. It speaks only what the counter needs: ``AUTH``/``SELECT`` when connecting,
``SCRIPT LOAD``, ``EVALSHA`` (``EVAL`` once after a ``NOSCRIPT``), and integer, string and flat
array replies.

Failures are loud and bounded: a reply that does not arrive within ``socket_timeout`` or a lost
connection fails every call in flight with ``ConnectionError`` (callers fail closed or open, as
configured) and the next call reconnects. URLs this client does not handle (``rediss://``,
``unix://``) return ``None`` from :func:`for_url`, and callers use redis-py instead.
"""

from __future__ import annotations

import asyncio
import collections
import urllib.parse
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    connect_timeout: float
    timeout: float


def for_url(url: str, options: dict[str, Any]) -> Target | None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        return None
    path = parts.path.strip("/")
    query = urllib.parse.parse_qs(parts.query)
    db = int(path or (query.get("db") or ["0"])[0])
    return Target(
        host=parts.hostname,
        port=parts.port or 6379,
        db=db,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password else None,
        connect_timeout=float(options.get("socket_connect_timeout") or 5),
        timeout=float(options.get("socket_timeout") or 5),
    )


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class ReplyError(Exception):
    """Redis answered with an error (``-ERR …``)."""


async def _read_value(reader: asyncio.StreamReader, nested: bool = False) -> Any:
    """One RESP2 reply: an integer, a simple or bulk string, an error (a :class:`ReplyError`
    value), or a flat array of those (what a script's table becomes)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return rest
    if kind == b"-":
        return ReplyError(rest.decode(errors="replace"))
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*" and not nested:
        size = int(rest)
        return None if size < 0 else [await _read_value(reader, nested=True) for _ in range(size)]
    raise ConnectionError(f"unexpected Redis reply {line[:40]!r}")


class ScriptConnection:
    """One pipelined connection running one Lua script (see the module docstring)."""

    def __init__(self, target: Target, source: str) -> None:
        self.target = target
        self.source = source.encode()
        self.sha: bytes | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting: asyncio.Future[None] | None = None
        #: connected and set up (authenticated, database selected, script loaded)
        self._ready = False
        self._reader_task: asyncio.Task[None] | None = None

    async def _connect(self) -> None:
        t = self.target
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(t.host, t.port), t.connect_timeout
        )
        self._reader, self._writer = reader, writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_replies())
        setup: list[bytes] = []
        if t.password is not None:
            creds = [t.username.encode()] if t.username else []
            setup.append(_command(b"AUTH", *creds, t.password.encode()))
        if t.db:
            setup.append(_command(b"SELECT", str(t.db).encode()))
        setup.append(_command(b"SCRIPT", b"LOAD", self.source))
        replies = [self._send(cmd) for cmd in setup]
        results = await asyncio.wait_for(asyncio.gather(*replies), t.timeout)
        self.sha = results[-1]
        self._ready = True

    async def _ensure(self) -> None:
        # the writer exists as soon as the socket is open, before AUTH/SELECT/SCRIPT LOAD have
        # answered (``_ready``): until then, a new call waits for the set-up like the others
        if self._ready and self._writer is not None and not self._writer.is_closing():
            return
        if self._connecting is None:
            connecting = self._connecting = asyncio.get_running_loop().create_future()
            try:
                await self._connect()
            except BaseException as exc:
                # whatever ends the set-up (an error, or this caller's cancellation) must
                # release the calls waiting for it, or they would wait forever
                error = ConnectionError(f"Redis connection failed: {exc!r}")
                self._fail(error)
                connecting.set_exception(error)
                connecting.exception()  # retrieved: no "never retrieved" warning
                self._connecting = None
                if isinstance(exc, OSError | TimeoutError | ConnectionError | ReplyError):
                    raise error from exc
                raise
            connecting.set_result(None)
            self._connecting = None
        else:
            await asyncio.shield(self._connecting)

    def _send(self, command: bytes) -> asyncio.Future[Any]:
        assert self._writer is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(command)
        except RuntimeError as exc:  # uvloop: the transport closed under us
            error = ConnectionError(f"Redis connection lost: {exc}")
            self._fail(error)
            raise error from exc
        self._pending.append(future)  # replies come in the order of the writes
        return future

    async def _read_replies(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            while True:
                value = await _read_value(reader)
                future = self._pending.popleft()
                if future.done():
                    continue
                if isinstance(value, ReplyError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            self._fail(ConnectionError(str(exc) or "Redis connection lost"))

    def _fail(self, exc: Exception) -> None:
        self._ready = False
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)
                future.exception()  # a caller that timed out never reads it
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        self._reader_task = None

    async def run(self, key: str, *args: int) -> Any:
        """The script's reply for ``KEYS[1] = key``, ``ARGV = args``."""
        await self._ensure()
        assert self.sha is not None
        k, a = key.encode(), [str(arg).encode() for arg in args]
        future = self._send(_command(b"EVALSHA", self.sha, b"1", k, *a))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.target.timeout)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # the server lost its scripts (restart, SCRIPT FLUSH): run it by source, reload
            retry = self._send(_command(b"EVAL", self.source, b"1", k, *a))
            self._send(_command(b"SCRIPT", b"LOAD", self.source))
            return await asyncio.wait_for(asyncio.shield(retry), self.target.timeout)
        except TimeoutError:
            # replies would no longer match their calls: drop the connection
            self._fail(ConnectionError("Redis did not answer in time"))
            raise ConnectionError("Redis did not answer in time") from None
