"""Pure helpers of the ``/mcp`` edge: client IP, Host/Origin, bearer parsing."""

from __future__ import annotations

import pytest

from mcpauth.conf import get_settings
from mcpauth.edge.guards import bearer_token, check_host
from mcpauth.exceptions import HostNotAllowed, InvalidToken
from mcpauth.types import client_ip


def scope(*headers: tuple[str, str], peer: str = "10.0.0.9") -> dict:
    return {
        "type": "http",
        "client": (peer, 1234),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }


def test_forwarded_for_is_ignored_without_trusted_proxies():
    s = scope(("x-forwarded-for", "6.6.6.6"))
    assert client_ip(s, 0) == "10.0.0.9"


@pytest.mark.parametrize(
    ("xff", "proxies", "expected"),
    [
        ("1.1.1.1", 1, "1.1.1.1"),
        ("6.6.6.6, 1.1.1.1", 1, "1.1.1.1"),  # the client forged the first hop
        ("6.6.6.6, 1.1.1.1, 2.2.2.2", 2, "1.1.1.1"),
        ("1.1.1.1", 3, "1.1.1.1"),
    ],
)
def test_forwarded_for_counts_trusted_hops_from_the_right(xff, proxies, expected):
    assert client_ip(scope(("x-forwarded-for", xff)), proxies) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Basic dXNlcjpwdw==", None),
        ("", None),
    ],
)
def test_bearer_token_parsing(value, expected):
    assert bearer_token(scope(("authorization", value))) == expected


@pytest.mark.parametrize("value", ["Bearer", "Bearer a b"])
def test_malformed_bearer_is_invalid_token(value):
    with pytest.raises(InvalidToken):
        bearer_token(scope(("authorization", value)))


def test_host_and_origin_rules(settings):
    settings.ALLOWED_HOSTS = ["mcp.example.com"]
    settings.MCPAUTH_BASE_URL = "https://mcp.example.com"
    conf = get_settings()
    check_host(scope(("host", "mcp.example.com")), conf)
    check_host(scope(("host", "mcp.example.com"), ("origin", "https://mcp.example.com")), conf)
    for bad in (
        scope(("host", "evil.test")),
        scope(),
        scope(("host", "mcp.example.com"), ("origin", "https://evil.test")),
        scope(("host", "mcp.example.com"), ("origin", "null")),
    ):
        with pytest.raises(HostNotAllowed):
            check_host(bad, conf)
    settings.MCPAUTH_ALLOWED_ORIGINS = "https://app.example.org"
    check_host(
        scope(("host", "mcp.example.com"), ("origin", "https://app.example.org")), get_settings()
    )


def test_wildcard_hosts_still_require_same_host_origin(settings):
    settings.ALLOWED_HOSTS = ["*"]
    conf = get_settings()
    check_host(scope(("host", "anything.test"), ("origin", "http://anything.test")), conf)
    with pytest.raises(HostNotAllowed):
        check_host(scope(("host", "anything.test"), ("origin", "http://evil.test")), conf)
