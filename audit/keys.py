"""The Ed25519 keys that sign and verify audit seals (never ``SECRET_KEY``).

* :func:`signing_key` loads ``AUDIT_SEAL_KEY_PATH`` (PEM, PKCS#8, e.g.
  ``openssl genpkey -algorithm ed25519 -out seal.pem``). Without it, with ``DEBUG`` on or
  ``AUDIT_DEV_SEAL_KEY``, a development key is created at ``AUDIT_DEV_SEAL_KEY_PATH`` on first
  use (mode 0600), as the development issuer does; in production :class:`SealKeyError` says
  what to set.
* :func:`verify_keys` is every public key ``audit_verify`` accepts, by :func:`key_id`: the
  signing key's (when present) and those of ``AUDIT_SEAL_VERIFY_KEYS``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.conf import get_settings

_lock = threading.Lock()
_cache: dict[Path, Ed25519PrivateKey] = {}


class SealKeyError(Exception):
    """No usable seal key: the message says which setting to fix."""


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SealKeyError(
            f"Cannot read the seal key AUDIT_SEAL_KEY_PATH={path}: {exc.strerror or exc}."
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SealKeyError(
            f"AUDIT_SEAL_KEY_PATH={path} is not an unencrypted PEM private key."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SealKeyError(f"AUDIT_SEAL_KEY_PATH={path} is not an Ed25519 key.")
    return key


def _create(path: Path) -> Ed25519PrivateKey:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _load_private(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def signing_key() -> Ed25519PrivateKey:
    """The private seal key (created first, for the development key only)."""
    conf = get_settings()
    path = conf.seal_key_path
    if path is None:
        raise SealKeyError(
            "No seal key: set AUDIT_SEAL_KEY_PATH to an Ed25519 private key (PEM), e.g. made "
            "with `openssl genpkey -algorithm ed25519 -out audit-seal.pem` (audit.E002)."
        )
    with _lock:
        if path in _cache:
            return _cache[path]
        key = _create(path) if conf.seal_key_is_dev and not path.exists() else _load_private(path)
        _cache[path] = key
        return key


def _load_public(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SealKeyError(
            f"Cannot read the verification key {path} (AUDIT_SEAL_VERIFY_KEYS): "
            f"{exc.strerror or exc}."
        ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise SealKeyError(f"{path} (AUDIT_SEAL_VERIFY_KEYS) is not a PEM public key.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SealKeyError(f"{path} (AUDIT_SEAL_VERIFY_KEYS) is not an Ed25519 key.")
    return key


def verify_keys() -> dict[str, Ed25519PublicKey]:
    """``{key_id: public key}``: the signing key's and ``AUDIT_SEAL_VERIFY_KEYS``."""
    conf = get_settings()
    keys: dict[str, Ed25519PublicKey] = {}
    if conf.seal_key_path is not None and (conf.seal_key_path.exists() or conf.seal_key_is_dev):
        public = signing_key().public_key()
        keys[key_id(public)] = public
    for path in conf.verify_key_paths:
        public = _load_public(path)
        keys[key_id(public)] = public
    if not keys:
        raise SealKeyError(
            "No key to verify seals with: set AUDIT_SEAL_KEY_PATH (the signing key) or "
            "AUDIT_SEAL_VERIFY_KEYS (its public key, PEM)."
        )
    return keys


def clear_cache() -> None:
    with _lock:
        _cache.clear()
