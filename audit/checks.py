"""System checks for the audit trail (``python manage.py check [--deploy]``).

* ``audit.E001`` ``AUDIT_SEAL_KEY_PATH`` is set but is not a readable Ed25519 private key, or a
  file of ``AUDIT_SEAL_VERIFY_KEYS`` is not an Ed25519 public key;
* ``audit.E002`` (``check --deploy``) neither a seal key nor a verification key while ``DEBUG``
  is off: the trail is not sealed, so nobody can prove it untouched. (Hosts that only serve
  requests set ``AUDIT_SEAL_VERIFY_KEYS`` to the public key; the sealing job has the private
  one.)

(With ``DEBUG`` on, or ``AUDIT_DEV_SEAL_KEY``, a development key is used: no message.)
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from audit import keys
from audit.conf import get_settings

_KEY_HINT = (
    "Create one with `openssl genpkey -algorithm ed25519 -out audit-seal.pem` (mode 0600, "
    "readable by the account that runs audit_seal) and set AUDIT_SEAL_KEY_PATH to it; hosts "
    "that only serve requests set AUDIT_SEAL_VERIFY_KEYS to its public key "
    "(audit_seal --print-public-key)."
)


@checks.register("audit")
def check_seal_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    conf = get_settings()
    messages: list[checks.CheckMessage] = []
    if conf.seal_key_path is not None and not conf.seal_key_is_dev:
        try:
            keys.signing_key()
        except keys.SealKeyError as exc:
            messages.append(checks.Error(str(exc), hint=_KEY_HINT, id="audit.E001"))
    for path in conf.verify_key_paths:
        try:
            keys._load_public(path)
        except keys.SealKeyError as exc:
            messages.append(
                checks.Error(
                    str(exc),
                    hint="Each file is a PEM public key, as `audit_seal --print-public-key` "
                    "prints it.",
                    id="audit.E001",
                )
            )
    return messages


@checks.register("audit", deploy=True)
def check_seal_key_configured(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    conf = get_settings()
    if conf.seal_key_path is None and not conf.verify_key_paths:
        return [
            checks.Error(
                "No audit seal key: with DEBUG off the audit trail is not sealed, so nobody "
                "can prove it untouched (audit_seal refuses to run).",
                hint=_KEY_HINT,
                id="audit.E002",
            )
        ]
    return []
