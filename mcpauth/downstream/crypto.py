"""Secrets at rest: AES-256-GCM with keys from ``MCPAUTH_ENCRYPTION_KEYS``.

* Each configured key (any string of at least 32 characters, e.g.
  ``python -c "import secrets; print(secrets.token_urlsafe(32))"``) is never used as is: an
  AES-256 key is derived from it per *purpose* with HKDF-SHA256, so the stored secrets and the
  cached tokens never share a key.
* The first key encrypts; every key decrypts. A ciphertext carries the id of the key that made
  it (a short hash of the derived key, never the key), so rotating is: put the new key first,
  keep the old one after it, run ``manage.py downstreams reencrypt``, then drop the old key.
* The *associated data* binds a ciphertext to where it belongs (a stored secret to its
  downstream and tenant): moved to another row, it no longer decrypts.
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mcpauth.downstream.conf import MIN_KEY_CHARS, get_settings

#: What a derived key is for (the HKDF ``info``).
SECRETS = "downstream-secret"
TOKEN_CACHE = "downstream-token-cache"
_NONCE = 12


class KeyUnavailable(Exception):
    """No configured key can encrypt (none configured) or decrypt this ciphertext."""


@lru_cache(maxsize=64)
def _derive(material: str, purpose: str) -> tuple[str, bytes]:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"mcpauth", info=f"mcpauth:{purpose}".encode()
    ).derive(material.encode())
    return hashlib.sha256(key).hexdigest()[:12], key


def _keys(purpose: str) -> list[tuple[str, bytes]]:
    return [_derive(k, purpose) for k in get_settings().encryption_keys if len(k) >= MIN_KEY_CHARS]


def available() -> bool:
    return bool(_keys(SECRETS))


def current_key_id(purpose: str = SECRETS) -> str:
    keys = _keys(purpose)
    if not keys:
        raise KeyUnavailable("MCPAUTH_ENCRYPTION_KEYS is not set")
    return keys[0][0]


def encrypt(plaintext: bytes, *, purpose: str, aad: bytes) -> tuple[str, str]:
    """``(key id, base64 of nonce + ciphertext)`` under the first configured key."""
    keys = _keys(purpose)
    if not keys:
        raise KeyUnavailable(
            "MCPAUTH_ENCRYPTION_KEYS is not set: secrets cannot be stored (mcpauth.E051)"
        )
    key_id, key = keys[0]
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(key).encrypt(nonce, plaintext, aad)
    return key_id, base64.b64encode(nonce + sealed).decode("ascii")


def decrypt(key_id: str, blob: str, *, purpose: str, aad: bytes) -> bytes:
    """The plaintext; :class:`KeyUnavailable` when no configured key made it or it was moved."""
    for kid, key in _keys(purpose):
        if kid != key_id:
            continue
        try:
            raw = base64.b64decode(blob.encode("ascii"), validate=True)
            return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], aad)
        except (InvalidTag, ValueError) as exc:
            raise KeyUnavailable("the ciphertext does not decrypt here") from exc
    raise KeyUnavailable(f"the key {key_id!r} that encrypted it is not configured")
