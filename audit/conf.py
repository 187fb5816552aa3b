"""Typed settings for the audit app, rebuilt on ``setting_changed``.

* ``AUDIT_RETENTION_DAYS`` (90): default age for ``audit_prune``.
* ``AUDIT_RECORD_ALL_METHODS`` (True): record ``tools/list``, ``initialize`` and other methods,
  not only ``tools/call`` and refusals.
* ``AUDIT_SENSITIVE_KEYS``: argument keys (case-insensitive substrings) whose values are replaced
  by ``[redacted]``.
* ``AUDIT_MAX_VALUE_CHARS`` (256): longer strings are truncated in the stored arguments.
* ``AUDIT_SEAL_KEY_PATH``: the Ed25519 private key (PEM, PKCS#8) that signs seals; separate from
  ``SECRET_KEY``. Unset with ``DEBUG`` on (or ``AUDIT_DEV_SEAL_KEY``, as the test suite sets it),
  a development key is created at ``AUDIT_DEV_SEAL_KEY_PATH`` (``var/audit-seal-key.pem``,
  relative to the working directory) on first use; unset in production, ``audit_seal`` refuses
  to run (``audit.E002``).
* ``AUDIT_SEAL_VERIFY_KEYS``: more Ed25519 public keys (PEM files) that ``audit_verify`` accepts:
  a verifier without the private key, and the keys of seals signed before a rotation.
* ``AUDIT_SEAL_BLOCK_ROWS`` (10000): the most rows one seal covers.
* ``AUDIT_SETTLE_SECONDS`` (10): how old a row must be before it is sealed or streamed by
  ``audit_export --follow`` (see :mod:`audit.horizon`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
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
    #: The private seal key; ``None`` when none is configured and none may be made up.
    seal_key_path: Path | None = None
    #: ``seal_key_path`` is the development key (created on first use).
    seal_key_is_dev: bool = False
    verify_key_paths: tuple[Path, ...] = ()
    seal_block_rows: int = 10_000
    settle_seconds: float = 10.0


@lru_cache(maxsize=1)
def get_settings() -> AuditSettings:
    s = dj_settings
    configured = str(getattr(s, "AUDIT_SEAL_KEY_PATH", "") or "")
    dev_allowed = getattr(s, "DEBUG", False) or getattr(s, "AUDIT_DEV_SEAL_KEY", False)
    dev = not configured and bool(dev_allowed)
    dev_path = Path(getattr(s, "AUDIT_DEV_SEAL_KEY_PATH", "") or "var/audit-seal-key.pem")
    key_path = Path(configured) if configured else (dev_path if dev else None)
    return AuditSettings(
        retention_days=int(getattr(s, "AUDIT_RETENTION_DAYS", 90)),
        record_all_methods=bool(getattr(s, "AUDIT_RECORD_ALL_METHODS", True)),
        sensitive_keys=tuple(
            k.lower() for k in getattr(s, "AUDIT_SENSITIVE_KEYS", DEFAULT_SENSITIVE_KEYS)
        ),
        max_value_chars=int(getattr(s, "AUDIT_MAX_VALUE_CHARS", 256)),
        seal_key_path=key_path,
        seal_key_is_dev=dev,
        verify_key_paths=tuple(Path(p) for p in getattr(s, "AUDIT_SEAL_VERIFY_KEYS", ()) or ()),
        seal_block_rows=int(getattr(s, "AUDIT_SEAL_BLOCK_ROWS", 10_000)),
        settle_seconds=float(getattr(s, "AUDIT_SETTLE_SECONDS", 10)),
    )


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("AUDIT_") or setting == "DEBUG":
        get_settings.cache_clear()
