"""Bearer-token authentication for the MCP endpoint, as a DRF authentication class (what
django-mcp-server's ``DJANGO_MCP_AUTHENTICATION_CLASSES`` takes).

django-mcp-server has no JWT option of its own (its README points at DRF's classes and at
django-oauth-toolkit, whose tokens live in its own tables), so this is the small class a user
with an external OAuth issuer writes: PyJWT verifies the RS256 signature against the issuer's
JWKS (keys cached by ``PyJWKClient``) and checks ``iss``, ``aud`` and expiry, as FastMCP's
``JWTVerifier`` does for the baseline and fair servers. The verified claims are
``request.auth``; the user is a token user (no database lookup).
"""

from __future__ import annotations

from typing import Any

import jwt
from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

_jwks = jwt.PyJWKClient(settings.BENCH_JWKS_URL, cache_keys=True)


class TokenUser:
    """The caller as the token names it."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims
        self.username = str(claims.get("sub") or claims.get("client_id") or "")
        self.scopes = frozenset(str(claims.get("scope") or "").split())

    def __str__(self) -> str:
        return self.username


class BearerJWTAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[TokenUser, dict[str, Any]] | None:
        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            key = _jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=settings.BENCH_AUDIENCE,
                issuer=settings.BENCH_ISSUER,
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"Invalid token: {exc}") from None
        return TokenUser(claims), claims

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="mcp"'
