"""Make what is stored safe: sensitive keys masked, secret-shaped text removed, values cut.

* :func:`redact` (tool arguments): values under a sensitive key (``AUDIT_SENSITIVE_KEYS``) become
  ``[redacted]``; every string goes through :func:`scrub_text`; long or deep values are cut.
* :func:`scrub_text` (free text: arguments' strings, error messages, user agents): JWTs, bearer
  credentials, ``key=value`` / ``key: value`` / ``"key": "value"`` pairs whose key is
  sensitive (``api_key=…``, ``password: …``, also JSON-escaped), any ``Authorization:`` value,
  the password in ``scheme://user:password@host``, PEM private keys, and well-known key formats
  (``sk-…``, ``ghp_…``, ``xoxb-…``, ``AKIA…``) are replaced; keys of arguments too.
* :func:`identifier` (method, tool, ids): control characters become U+FFFD, so a stored value
  can never start a new line or record in an export or a terminal.
"""

from __future__ import annotations

import re
from typing import Any

from audit.conf import get_settings

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER_RE = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
#: ``Authorization: <any scheme> <credentials>`` (``Token …``, ``Digest …``, ``ApiKey …``)
_AUTHORIZATION_RE = re.compile(
    r"(?i)\b(?P<head>(?:proxy-)?authorization\s*[:=]\s*)(?!bearer |basic |\[redacted)"
    r"(?P<value>[A-Za-z][A-Za-z0-9-]*\s+[^\s,;]+|[^\s,;]+)"
)
#: ``scheme://user:password@host``: the password goes
_URL_CREDENTIALS_RE = re.compile(
    r"(?i)(?<![a-z0-9+.-])(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^\s/]*@"
)
#: PEM private keys (also cut short, without their END line)
_PRIVATE_KEY_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
#: ``api_key=…``, ``password: …``, ``"client_secret": "…"`` (also JSON escaped inside a string,
#: ``{\"password\": \"…\"}``): the key is kept, the value goes.
_PAIR_RE = re.compile(
    r"""(?ix)
    (?<![a-z0-9_.-])   # a key starts where a word does (keeps long runs linear)
    (?P<key>\\?["']?[a-z0-9_.-]*(?:api[_-]?key|apikey|passw(?:or)?d|pwd|secret|token|credential
        |private[_-]?key|session|cookie)[a-z0-9_.-]*\\?["']?)
    (?P<sep>\s*[:=]\s*)
    (?P<value>\\"(?:(?!\\").)*\\"|"[^"]*"|'[^']*'|(?!\[redacted)[^\s,;&"'}\]]+)
    """
)
#: Credentials recognisable by their own shape, wherever they appear.
_KEY_SHAPES_RE = re.compile(
    r"""(?x)
    \b(?:sk|pk|rk)-(?:[a-z]+-)?[A-Za-z0-9_-]{16,}   # sk-…, sk-proj-…, pk-live-… style API keys
    | \bgh[pousr]_[A-Za-z0-9]{20,}                  # GitHub tokens
    | \bxox[abprs]-[A-Za-z0-9-]{10,}                # Slack tokens
    | \b(?:AKIA|ASIA)[0-9A-Z]{16}\b                 # AWS access key ids
    | \bAIza[0-9A-Za-z_-]{35}                       # Google API keys
    """
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: What no database column can take: NUL (PostgreSQL text and jsonb refuse it) and lone
#: surrogates (valid JSON escapes, ``"\\ud800"``, but not encodable as UTF-8 anywhere).
_UNSTORABLE_RE = re.compile(r"[\x00\ud800-\udfff]")
REDACTED = "[redacted]"


def clean(text: str) -> str:
    """Text any database can store: NUL and lone surrogates (both valid in JSON) become U+FFFD."""
    return _UNSTORABLE_RE.sub("\ufffd", text)


def identifier(text: str) -> str:
    """An identifier-like value (method, tool, ids) without control characters."""
    return _CONTROL_RE.sub("\ufffd", text)


def _pair(match: re.Match[str]) -> str:
    value = match["value"]
    quote = '\\"' if value.startswith('\\"') else value[0] if value[0] in "\"'" else ""
    return f"{match['key']}{match['sep']}{quote}{REDACTED}{quote}"


#: Free text longer than this is cut before it is scrubbed (callers store far less), which
#: bounds the patterns' work on hostile input.
SCRUB_LIMIT = 4096


def scrub_text(text: str) -> str:
    """Remove anything token- or secret-shaped from free text (and NULs)."""
    if len(text) > SCRUB_LIMIT:
        text = text[:SCRUB_LIMIT]
    text = _JWT_RE.sub("[redacted-jwt]", clean(text))
    if "PRIVATE KEY-----" in text:
        text = _PRIVATE_KEY_RE.sub("[redacted-private-key]", text)
    text = _BEARER_RE.sub(lambda m: f"{m['scheme']} {REDACTED}", text)
    if "=" in text or ":" in text:
        text = _AUTHORIZATION_RE.sub(lambda m: f"{m['head']}{REDACTED}", text)
        text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m['head']}{REDACTED}@", text)
        text = _PAIR_RE.sub(_pair, text)
    return _KEY_SHAPES_RE.sub("[redacted-key]", text)


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
            skey = scrub_text(str(key)[:100])  # a key can be a secret too
            while skey in out:  # two names scrubbed alike: keep both values
                skey += "'"
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
        text = scrub_text(value[: conf.max_value_chars * 4])  # more than is kept; bounded work
        if len(value) > conf.max_value_chars or len(text) > conf.max_value_chars:
            return text[: conf.max_value_chars] + f"…[truncated {len(value)} chars]"
        return text
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value), _depth=_depth + 1)
