"""What the ``/mcp`` edge checks before admission: the ``Host`` and ``Origin`` (DNS-rebinding
protection, 403), the body (read within a size cap and a time limit, 413/408) and the bearer
token's shape (401 for an ambiguous or malformed ``Authorization`` header).

* :func:`read_body` refuses a body over ``MCPAUTH_MAX_BODY_BYTES`` (413) and one that has not
  fully arrived ``MCPAUTH_BODY_TIMEOUT`` seconds after the request's headers did (408), whether
  it trickles in or never starts: a slow client holds a connection for a bounded time.
"""

from __future__ import annotations

import ipaddress
import time

import anyio
from django.http.request import split_domain_port, validate_host

from mcpauth.conf import MCPAuthSettings, origin_key
from mcpauth.exceptions import HostNotAllowed, InvalidToken, PayloadTooLarge, RequestTimeout
from mcpauth.types import Receive, Scope, header_values


def bearer_token(scope: Scope) -> str | None:
    """The bearer token, or ``None`` when absent; raise for ambiguous or malformed headers."""
    values = header_values(scope, b"authorization")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidToken("Multiple Authorization headers.", reason="malformed")
    try:
        value = values[0].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidToken("Malformed Authorization header.", reason="malformed") from None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or " " in token:
        raise InvalidToken("Malformed Authorization header.", reason="malformed")
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(scope: Scope, conf: MCPAuthSettings) -> None:
    """DNS-rebinding protection: a ``Host`` this server serves, and an allowed ``Origin``.

    ``Host`` follows Django's ``ALLOWED_HOSTS`` rules (so ``LOCALHOST`` and ``localhost.`` are
    ``localhost``: the same name, which an attacker cannot rebind). An ``Origin``, when sent,
    must match scheme, host and port of ``BASE_URL`` or of an ``MCPAUTH_ALLOWED_ORIGINS`` entry;
    with ``MCPAUTH_LOOPBACK_ORIGINS_ANY_PORT`` and a loopback ``BASE_URL``, any loopback origin
    (any port) is allowed too; with ``ALLOWED_HOSTS = ["*"]``, the request's own origin.
    """
    hosts = list(conf.allowed_hosts) or [".localhost", "127.0.0.1", "[::1]"]
    host_values = header_values(scope, b"host")
    host = host_values[0].decode("latin-1") if host_values else ""
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, hosts):
        raise HostNotAllowed("Host not allowed.", reason="bad_host")
    origins = header_values(scope, b"origin")
    if not origins:
        return
    key = origin_key(origins[0].decode("latin-1"))
    if key is not None:
        if key in conf.allowed_origin_keys:
            return
        base = origin_key(conf.base_url)
        if (
            conf.loopback_origins_any_port
            and base is not None
            and _is_loopback(base[1])
            and _is_loopback(key[1])
        ):
            return
        if "*" in hosts and key == origin_key(f"{scope.get('scheme', 'http')}://{host}"):
            return
    raise HostNotAllowed("Origin not allowed.", reason="bad_origin")


async def read_body(receive: Receive, scope: Scope, conf: MCPAuthSettings) -> bytes:
    """The request body, whole; raise ``PayloadTooLarge`` (413) or ``RequestTimeout`` (408).

    The time limit runs from now (the server calls the app once the headers are in) to the
    body's last byte, so it bounds the wait for the first byte as well as a trickle.
    """
    limit = conf.max_body_bytes
    for value in header_values(scope, b"content-length"):
        if value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
    deadline = time.monotonic() + conf.body_timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as waited:
            message = await receive()
        if waited.cancelled_caught:
            raise RequestTimeout(
                f"The request body did not arrive within {conf.body_timeout:g} seconds."
            )
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
