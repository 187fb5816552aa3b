"""Make tool arguments safe to store: sensitive keys masked, big values cut, no tokens."""

from __future__ import annotations

import re
from typing import Any

from audit.conf import get_settings

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER_RE = re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "[redacted]"


def clean(text: str) -> str:
    """Text PostgreSQL can store: NUL (valid in JSON, refused by text/jsonb) becomes U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def scrub_text(text: str) -> str:
    """Remove anything token-shaped from free text (and NULs)."""
    text = _JWT_RE.sub("[redacted-jwt]", clean(text))
    return _BEARER_RE.sub("Bearer [redacted]", text)


def redact(value: Any, *, _depth: int = 0) -> Any:
    conf = get_settings()
    if _depth >= conf.max_depth:
        return "[truncated: too deep]"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i >= conf.max_items:
                out["…"] = f"[{len(value) - i} more keys]"
                break
            skey = clean(str(key)[:100])
            if any(s in skey.lower() for s in conf.sensitive_keys):
                out[skey] = REDACTED
            else:
                out[skey] = redact(item, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple):
        items = [redact(v, _depth=_depth + 1) for v in value[: conf.max_items]]
        if len(value) > conf.max_items:
            items.append(f"[{len(value) - conf.max_items} more items]")
        return items
    if isinstance(value, str):
        text = scrub_text(value)
        if len(text) > conf.max_value_chars:
            return text[: conf.max_value_chars] + f"…[truncated {len(text)} chars]"
        return text
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value), _depth=_depth + 1)
