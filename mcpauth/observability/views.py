"""``GET /metrics``: every worker's metrics, in the Prometheus text format, for allowed callers.

Every worker's with ``MCPAUTH_METRICS_DIR`` set; without it, the answering process's own.
Who may read it:

* a request straight from loopback (``127.0.0.0/8``, ``::1``), the default;
* a client whose address is in ``MCPAUTH_METRICS_ALLOWED_IPS`` (networks);
* any client sending ``Authorization: Bearer <MCPAUTH_METRICS_TOKEN>``, when that is set.

Everyone else gets 403. The client address is the peer's, or with ``MCPAUTH_TRUSTED_PROXIES``
set the one those proxies forwarded (the same rule as ``/mcp``). A request that came through
a proxy the server does not trust (it carries ``X-Forwarded-For``, ``Forwarded`` or
``X-Real-IP`` while ``MCPAUTH_TRUSTED_PROXIES`` is 0) is not granted loopback's default access:
a reverse proxy on the same host would otherwise expose the metrics to the world.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from mcpauth.observability.conf import LOOPBACK, ObservabilitySettings, get_settings

_FORWARDING = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def client_address(request: HttpRequest, trusted_proxies: int) -> str:
    """The caller's address by ``/mcp``'s rule (``mcpauth.types.client_ip``)."""
    from mcpauth.types import client_ip

    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    scope = {
        "client": (request.META.get("REMOTE_ADDR", ""), 0),
        "headers": [(b"x-forwarded-for", forwarded.encode("latin-1", "replace"))]
        if forwarded
        else [],
    }
    return client_ip(scope, trusted_proxies)


def _bearer(request: HttpRequest) -> str:
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def allowed(request: HttpRequest, conf: ObservabilitySettings) -> bool:
    """Whether ``request`` may read the metrics (see the module docstring)."""
    if conf.metrics_token:
        given = _bearer(request)
        if given and hmac.compare_digest(given.encode(), conf.metrics_token.encode()):
            return True
    try:
        address = ipaddress.ip_address(client_address(request, conf.trusted_proxies))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in conf.metrics_networks):
        return True
    proxied = conf.trusted_proxies == 0 and any(request.META.get(h) for h in _FORWARDING)
    # loopback's default access needs the connection itself from loopback too: a forwarded
    # address of 127.0.0.1 from anywhere else (a direct hit on the app port) is not loopback
    return not proxied and _is_loopback(address) and _is_loopback(request.META.get("REMOTE_ADDR"))


def _is_loopback(value: object) -> bool:
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in LOOPBACK)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    conf = get_settings()
    if not allowed(request, conf):
        return HttpResponse(
            "Forbidden: /metrics is open to loopback, MCPAUTH_METRICS_ALLOWED_IPS and "
            "MCPAUTH_METRICS_TOKEN.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    if conf.multiproc_dir:  # every worker's files, added up
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=conf.multiproc_dir)
    else:  # this process's own metrics
        from mcpauth.observability import metrics as _  # noqa: F401  (they exist once imported)

        registry = REGISTRY
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
