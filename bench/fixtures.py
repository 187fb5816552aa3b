"""The bench's identity provider, database, Redis and seed data."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common import (
    CLIENT_ID,
    DATABASE_URL,
    DB_NAME,
    PG_ADMIN_URL,
    REDIS_URL,
    ROOT,
    SEED_IDS,
    SUBJECT,
    TENANT,
)


class Issuer:
    """An RSA key, its JWKS served over loopback HTTP from a thread, and a token minter."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        self.kid = "bench-key-1"
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.fetches = 0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/jwks.json":
                    state.fetches += 1
                    body = state.jwks
                elif self.path == "/.well-known/openid-configuration":
                    body = json.dumps(
                        {"issuer": state.url, "jwks_uri": f"{state.url}/jwks.json"}
                    ).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"

    def mint(self, audience: str, ttl: int = 6 * 3600) -> str:
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": audience,
            "sub": SUBJECT,
            "client_id": CLIENT_ID,
            "org_id": TENANT,
            "scope": "todo:read todo:write",
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims, self.private, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"}
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- database and cache ---------------------------------------------------------------------


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def drop_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    client.flushdb()
    client.close()


def django_env(issuer: Issuer, ours_port: int, rate: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "SECRET_KEY": "bench-secret-key-not-for-production-" + "x" * 20,
        "BASE_URL": f"http://127.0.0.1:{ours_port}",
        "MCPAUTH_ISSUER": issuer.url,
        "MCPAUTH_JWKS_URL": issuer.jwks_url,
        "MCPAUTH_TENANT_CLAIM": "org_id",
        "MCPAUTH_RATE_LIMIT": rate,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": DATABASE_URL,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    # only this process (the test Client's host); the servers keep the default ALLOWED_HOSTS
    os.environ["ALLOWED_HOSTS"] = "localhost 127.0.0.1 testserver"
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def seed_todos() -> int:
    from mcpauth.models import Tenant
    from todos.models import Todo

    tenant, _ = Tenant.objects.get_or_create(external_id=TENANT, defaults={"name": TENANT})
    Todo.all_tenants.bulk_create(
        [
            Todo(
                id=uuid.UUID(tid),
                tenant=tenant,
                title=f"Seeded todo {n}",
                description="seeded",
                created_by="bench",
            )
            for n, tid in enumerate(SEED_IDS)
        ]
    )
    return int(tenant.pk)


def analyze_tables() -> None:
    """Refresh planner statistics, as autovacuum does on a database in steady state.

    The create scenarios add thousands of rows within seconds; without fresh statistics the
    planner keeps the estimate of the 64 seeded rows and sorts a whole tenant for a page of 20.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE todos_todo, audit_auditevent")


def audit_count() -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_auditevent")
        return int(cur.fetchone()[0])


def todo_count(tenant_pk: int, todo_id: str | None = None) -> int:
    """The tenant's todo rows (or whether ``todo_id`` is one of them), read as the login role."""
    from django.db import connection

    sql = "SELECT count(*) FROM todos_todo WHERE tenant_id = %s"
    params: list[Any] = [tenant_pk]
    if todo_id is not None:
        sql += " AND id = %s::uuid"
        params.append(todo_id)
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return int(cur.fetchone()[0])


def connection_counters() -> dict[str, int]:
    """New connections so far: Redis (server-wide) and PostgreSQL sessions on the bench DB."""
    import redis
    from django.db import connection

    out = {"redis_connections": -1, "redis_commands": -1, "pg_sessions": -1}
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        stats = client.info("stats")
        out["redis_connections"] = int(stats["total_connections_received"])
        out["redis_commands"] = int(stats["total_commands_processed"])
        client.close()
    with contextlib.suppress(Exception), connection.cursor() as cur:
        # (per-backend statistics reach pg_stat_database late; sessions are counted at connect)
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        out["pg_sessions"] = int(cur.fetchone()[0])
    return out
