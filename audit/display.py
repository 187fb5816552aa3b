"""Identifiers shown so that look-alikes cannot pass for each other.

An identifier (tenant external id and name, client id, subject, tool name, JSON-RPC method,
issuer) is shown by :func:`visible`: printable ASCII as it is (HTML-escaped, exactly as before),
every other character as a Python-style escape (``\\u0430``, ``\\U0001f600``) in a styled
``<span class="mcp-esc mcp-esc-<kind>">`` whose ``title`` names each character. So ``acme``
spelt with a Cyrillic U+0430 reads ``\\u0430cme``, a full-width ``acme`` reads
``\\uff41\\uff43\\uff4d\\uff45`` and a tool named ``\\u202eodot_eteled`` can no longer display
as ``delete_todo``. The kinds are ``bidi`` (direction controls: they reorder what follows),
``hidden`` (controls, zero-width and other format characters, spaces other than U+0020,
combining marks, unassigned code points) and ``other`` (any other non-ASCII character).

* :func:`visible_text` is the same without markup, for places that take text only (``title``
  attributes, ``<option>`` labels, ``<title>``).
* :func:`reveal_hidden` (and :func:`reveal_hidden_text`) is for free text (error messages, user
  agents, arguments): only the ``bidi`` and ``hidden`` characters are escaped, other letters
  stay as they are.

Only the display changes: stored values, filters, links and exports keep the exact value.
Template filters: ``{% load audit_display %}`` then ``{{ value|visible }}`` and
``{{ value|visible_text }}``.
"""

from __future__ import annotations

import re
import unicodedata

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

#: Characters that change the direction of the text around them.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
#: Unicode categories that draw nothing (or nothing distinguishable) on their own.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]+")
_FREE_TEXT_SPECIAL = re.compile(r"[^\x20-\x7e\n]+")
#: What the ``title`` says a character is, by Unicode category (else: ``not ASCII``).
_CATEGORY_LABEL = {
    "Cc": "control character",
    "Cf": "invisible formatting character",
    "Cs": "surrogate",
    "Co": "private use",
    "Cn": "unassigned",
    "Zs": "space, not U+0020",
    "Zl": "line separator",
    "Zp": "paragraph separator",
    "Mn": "combining mark",
    "Me": "combining mark",
}
#: Names Python's ``unicodedata`` does not give (the C0 and C1 controls).
_CONTROL_NAMES = {
    "\x00": "NULL",
    "\t": "CHARACTER TABULATION",
    "\n": "LINE FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x7f": "DELETE",
}
#: A run's ``title`` names at most this many characters.
TITLE_CHARS = 12


def kind(char: str) -> str:
    """``bidi``, ``hidden`` or ``other`` for one character outside printable ASCII."""
    if char in BIDI_CONTROLS:
        return "bidi"
    if unicodedata.category(char) in _HIDDEN_CATEGORIES:
        return "hidden"
    return "other"


def escaped(char: str) -> str:
    """``\\u0430`` for U+0430, ``\\U0001f600`` beyond the Basic Multilingual Plane."""
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def describe(char: str) -> str:
    """``U+0430 CYRILLIC SMALL LETTER A (not ASCII)``."""
    name = unicodedata.name(char, "") or _CONTROL_NAMES.get(char, "CONTROL CHARACTER")
    if unicodedata.category(char) == "Cn":
        name = "UNASSIGNED"
    if char in BIDI_CONTROLS:
        what = "bidi control: reorders the text around it"
    else:
        what = _CATEGORY_LABEL.get(unicodedata.category(char), "not ASCII")
    return f"U+{ord(char):04X} {name} ({what})"


def _runs(text: str, pattern: re.Pattern[str]) -> list[tuple[bool, str]]:
    """``text`` cut into ``(special, part)`` runs, where ``special`` runs match ``pattern``."""
    parts: list[tuple[bool, str]] = []
    last = 0
    for match in pattern.finditer(text):
        if match.start() > last:
            parts.append((False, text[last : match.start()]))
        parts.append((True, match.group()))
        last = match.end()
    if last < len(text):
        parts.append((False, text[last:]))
    return parts


def _by_kind(run: str) -> list[tuple[str, str]]:
    """A run of special characters cut where the kind changes: ``[(kind, chars), ...]``."""
    groups: list[tuple[str, str]] = []
    for char in run:
        k = kind(char)
        if groups and groups[-1][0] == k:
            groups[-1] = (k, groups[-1][1] + char)
        else:
            groups.append((k, char))
    return groups


def _span(k: str, chars: str) -> SafeString:
    names = [describe(c) for c in chars[:TITLE_CHARS]]
    if len(chars) > TITLE_CHARS:
        names.append(f"and {len(chars) - TITLE_CHARS} more")
    return format_html(
        '<span class="mcp-esc mcp-esc-{}" title="{}">{}</span>',
        k,
        "; ".join(names),
        "".join(escaped(c) for c in chars),
    )


def visible(text: object) -> SafeString:
    """HTML of an identifier: printable ASCII as is, every other character escaped, marked."""
    value = "" if text is None else str(text)
    if not _NOT_PRINTABLE_ASCII.search(value):
        return escape(value)
    out: list[str] = []
    for special, part in _runs(value, _NOT_PRINTABLE_ASCII):
        if special:
            out.extend(_span(k, chars) for k, chars in _by_kind(part))
        else:
            out.append(escape(part))
    return mark_safe("".join(out))  # noqa: S308  (every part escaped above)


def visible_text(text: object) -> str:
    """An identifier as plain text: every character outside printable ASCII escaped."""
    value = "" if text is None else str(text)
    return _NOT_PRINTABLE_ASCII.sub(lambda m: "".join(escaped(c) for c in m.group()), value)


def reveal_hidden_text(text: object) -> str:
    """Free text as plain text (``title`` attributes): bidi and invisible characters escaped."""
    value = "" if text is None else str(text)
    return _FREE_TEXT_SPECIAL.sub(
        lambda m: "".join(c if kind(c) == "other" else escaped(c) for c in m.group()), value
    )


def reveal_hidden(text: object) -> SafeString:
    """HTML of free text: only bidi controls and invisible characters escaped and marked.

    Line feeds stay (pretty-printed JSON is laid out with them).
    """
    value = "" if text is None else str(text)
    if not _FREE_TEXT_SPECIAL.search(value):
        return escape(value)
    out: list[str] = []
    for special, part in _runs(value, _FREE_TEXT_SPECIAL):
        if not special:
            out.append(escape(part))
            continue
        for k, chars in _by_kind(part):
            out.append(escape(chars) if k == "other" else _span(k, chars))
    return mark_safe("".join(out))  # noqa: S308  (every part escaped above)
