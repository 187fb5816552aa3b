"""The built-in development issuer: a local RSA key under ``var/`` and tokens signed with it.

Active only when no identity provider is configured **and** ``DEBUG`` is on (see
``mcpauth.conf``). It exists so the quickstart runs with no outside services; production tokens
always come from an outside issuer.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mcpauth.conf import get_settings

_lock = threading.Lock()
_cache: dict[Path, rsa.RSAPrivateKey] = {}


def private_key(path: Path | None = None) -> rsa.RSAPrivateKey:
    """Load the development key, creating it (mode 0600) on first use."""
    path = path or get_settings().dev_key_path
    with _lock:
        if path in _cache:
            return _cache[path]
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{path} does not hold an RSA private key")
            key = loaded
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        _cache[path] = key
        return key


def key_id(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "dev-" + hashlib.sha256(der).hexdigest()[:16]


def jwks() -> dict[str, Any]:
    key = private_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": key_id(key), "use": "sig", "alg": "RS256"})
    return {"keys": [jwk]}


def mint(
    *,
    client_id: str,
    scopes: str,
    tenant: str | None = None,
    subject: str | None = None,
    ttl: int = 3600,
) -> str:
    """Sign a development access token for this server's resource."""
    conf = get_settings()
    key = private_key()
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": conf.dev_issuer,
        "aud": conf.resource_url,
        "sub": subject or client_id,
        "client_id": client_id,
        "scope": scopes,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    if tenant:
        claims[conf.tenant_claim] = tenant
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id(key), "typ": "at+jwt"})
