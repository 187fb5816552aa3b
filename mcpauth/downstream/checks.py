"""System checks for the declared downstreams (``manage.py check``; errors stop ASGI startup).

* ``mcpauth.E050`` an ``MCPAUTH_DOWNSTREAMS`` entry does not validate (it is left out);
* ``mcpauth.E051`` a downstream keeps its secret in the database, but no usable
  ``MCPAUTH_ENCRYPTION_KEYS`` is configured;
* ``mcpauth.E052`` an ``MCPAUTH_ENCRYPTION_KEYS`` entry is shorter than 32 characters, or listed
  twice;
* ``mcpauth.W053`` a downstream that receives credentials, or the token endpoint a client
  secret is sent to, is reached over plain http on a host that is not loopback.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from django.core import checks

from mcpauth.downstream.conf import MIN_KEY_CHARS, get_settings, is_loopback

_KEY_HINT = (
    "Set MCPAUTH_ENCRYPTION_KEYS to a list of random strings of at least 32 characters, newest "
    'first (python -c "import secrets; print(secrets.token_urlsafe(32))").'
)


def check_downstreams() -> list[checks.CheckMessage]:
    conf = get_settings()
    messages: list[checks.CheckMessage] = []
    for name, problem in conf.problems:
        messages.append(
            checks.Error(
                f"MCPAUTH_DOWNSTREAMS[{name!r}]: {problem}.",
                hint="See docs/downstream.md ('Call other systems from a tool') for the keys of "
                "each auth kind.",
                id="mcpauth.E050",
            )
        )
    short = [i for i, k in enumerate(conf.encryption_keys) if len(k) < MIN_KEY_CHARS]
    if short or len(set(conf.encryption_keys)) != len(conf.encryption_keys):
        messages.append(
            checks.Error(
                "MCPAUTH_ENCRYPTION_KEYS has a key shorter than "
                f"{MIN_KEY_CHARS} characters or a key listed twice"
                + (f" (positions {', '.join(map(str, short))})." if short else "."),
                hint=_KEY_HINT,
                id="mcpauth.E052",
            )
        )
    storing = sorted(n for n, d in conf.downstreams.items() if d.stores_secret)
    usable = [k for k in conf.encryption_keys if len(k) >= MIN_KEY_CHARS]
    if storing and not usable:
        messages.append(
            checks.Error(
                f"Downstream(s) {', '.join(storing)} keep their secret in the database, "
                "encrypted, but no encryption key is configured.",
                hint=_KEY_HINT,
                id="mcpauth.E051",
            )
        )
    for name, ds in sorted(conf.downstreams.items()):
        urls = [ds.url] if ds.kind != "none" else []
        urls += [u for u in (ds.token_url, ds.issuer) if u]
        for url in urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "http" and not is_loopback((parts.hostname or "").rstrip(".")):
                messages.append(
                    checks.Warning(
                        f"Downstream {name!r} sends credentials over plain http ({url}).",
                        hint="Use https for anything that is not on this machine.",
                        id="mcpauth.W053",
                    )
                )
    return messages


@checks.register("mcpauth")
def _check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return check_downstreams()
