"""Typed settings for the audit app, rebuilt on ``setting_changed``.

* ``AUDIT_RETENTION_DAYS`` (90): default age for ``audit_prune``.
* ``AUDIT_RECORD_ALL_METHODS`` (True): record ``tools/list``, ``initialize`` and other methods,
  not only ``tools/call`` and refusals.
* ``AUDIT_SENSITIVE_KEYS``: argument keys (case-insensitive substrings) whose values are replaced
  by ``[redacted]``.
* ``AUDIT_MAX_VALUE_CHARS`` (256): longer strings are truncated in the stored arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings as dj_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULT_SENSITIVE_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
    "credential",
    "private_key",
    "session",
)


@dataclass(frozen=True)
class AuditSettings:
    retention_days: int = 90
    record_all_methods: bool = True
    sensitive_keys: tuple[str, ...] = DEFAULT_SENSITIVE_KEYS
    max_value_chars: int = 256
    max_items: int = 50
    max_depth: int = 6


@lru_cache(maxsize=1)
def get_settings() -> AuditSettings:
    s = dj_settings
    return AuditSettings(
        retention_days=int(getattr(s, "AUDIT_RETENTION_DAYS", 90)),
        record_all_methods=bool(getattr(s, "AUDIT_RECORD_ALL_METHODS", True)),
        sensitive_keys=tuple(
            k.lower() for k in getattr(s, "AUDIT_SENSITIVE_KEYS", DEFAULT_SENSITIVE_KEYS)
        ),
        max_value_chars=int(getattr(s, "AUDIT_MAX_VALUE_CHARS", 256)),
    )


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("AUDIT_"):
        get_settings.cache_clear()
