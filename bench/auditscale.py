"""Audit at scale: 1M rows by COPY, then the admin and its overview, sealing and verifying,
audit_export and audit_prune (of whole sealed blocks)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import statistics
import time
import uuid
from typing import Any

from common import PY, RESULTS, run_with_rusage
from fixtures import audit_count

# --- audit at scale -------------------------------------------------------------------------

OUTCOMES = [
    ("ok", 85),
    ("tool_error", 5),
    ("denied", 4),
    ("rate_limited", 3),
    ("unauthenticated", 2),
    ("invalid_request", 1),
]
TOOLS = ["create_todo", "list_todos", "get_todo", "update_todo", "delete_todo"]
N_TENANTS = 50
N_CLIENTS = 200
AUDIT_DAYS = 60


def seed_audit_rows(rows: int) -> dict[str, Any]:
    from django.db import connection

    from mcpauth.models import Tenant

    Tenant.objects.bulk_create(
        [Tenant(external_id=f"tenant-{t:02d}", name=f"Tenant {t:02d}") for t in range(N_TENANTS)],
        ignore_conflicts=True,
    )
    rnd = random.Random(1234)
    outcome_pool = [o for o, w in OUTCOMES for _ in range(w)]
    status_of = {
        "ok": 200,
        "tool_error": 200,
        "denied": 403,
        "rate_limited": 429,
        "unauthenticated": 401,
        "invalid_request": 400,
    }
    end = dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(days=AUDIT_DAYS)
    step = (end - start) / rows
    cols = (
        "created_at, request_id, tenant, client_id, subject, token_id, scopes, method, tool, "
        "outcome, status, error_code, error_message, duration_ms, client_ip, user_agent, "
        "arguments"
    )
    known: dict[str, str] = {}
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE audit_auditevent RESTART IDENTITY")
        connection.ensure_connection()
        raw = connection.connection  # the psycopg connection
        with raw.cursor() as cur, cur.copy(f"COPY audit_auditevent ({cols}) FROM STDIN") as copy:
            buf: list[str] = []
            for i in range(rows):
                created = (start + step * i).isoformat()
                client = rnd.randrange(N_CLIENTS)
                tenant = f"tenant-{client % N_TENANTS:02d}"
                outcome = outcome_pool[rnd.randrange(100)]
                is_tool = rnd.random() < 0.9
                tool = TOOLS[rnd.randrange(5)] if is_tool else ""
                method = "tools/call" if is_tool else ("tools/list" if i % 2 else "initialize")
                unauth = outcome == "unauthenticated"
                rid = f"{rnd.getrandbits(128):032x}"
                err = "" if outcome == "ok" else outcome
                args = (
                    f'{{"todo_id": "{uuid.UUID(int=rnd.getrandbits(128))}"}}' if is_tool else "{}"
                )
                buf.append(
                    f"{created}\t{rid}\t{'' if unauth else tenant}\t"
                    f"{'' if unauth else f'client-{client:03d}'}\t"
                    f"{'' if unauth else f'user-{client:03d}'}\t"
                    f"{'' if unauth else f'jti-{rid[:16]}'}\t"
                    f"{'' if unauth else 'todo:read todo:write'}\t{method}\t{tool}\t{outcome}\t"
                    f"{status_of[outcome]}\t{err}\t{err and 'bench ' + err}\t"
                    f"{rnd.random() * 20:.3f}\t10.0.{client % 250}.{i % 250}\tbench-seed/1.0\t"
                    f"{args}\n"
                )
                if i == rows // 2:
                    known = {
                        "request_id": rid,
                        "client_id": f"client-{client:03d}",
                        "subject": f"user-{client:03d}",
                    }
                if len(buf) >= 20000:
                    copy.write("".join(buf))
                    buf.clear()
            if buf:
                copy.write("".join(buf))
        copy_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        cursor.execute("ANALYZE audit_auditevent")
        analyze_s = time.perf_counter() - t1
        cursor.execute("SELECT pg_total_relation_size('audit_auditevent')")
        size = int(cursor.fetchone()[0])
    return {
        "rows": rows,
        "copy_s": round(copy_s, 2),
        "analyze_s": round(analyze_s, 2),
        "table_mib_with_indexes": round(size / 2**20, 1),
        "span_days": AUDIT_DAYS,
        "known": known,
    }


def time_admin(known: dict[str, str]) -> list[dict[str, Any]]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    User = get_user_model()
    user, _ = User.objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    url = reverse("admin:audit_auditevent_changelist")
    now = dt.datetime.now(dt.UTC)
    pages = [
        ("default page", ""),
        ("filter outcome=denied", "?outcome=denied"),
        ("filter tool=get_todo", "?tool=get_todo"),
        ("filter tenant=tenant-07", "?tenant=tenant-07"),
        (f"filter client_id={known.get('client_id')}", f"?client_id={known.get('client_id')}"),
        ("filter outcome+tenant", "?outcome=denied&tenant=tenant-07"),
        (f"search client id ({known.get('client_id')})", f"?q={known.get('client_id')}"),
        ("search request id (1 row)", f"?q={known.get('request_id')}"),
        ("date drill-down: year", f"?created_at__year={now.year}"),
        (
            "date drill-down: year+month",
            f"?created_at__year={now.year}&created_at__month={now.month}",
        ),
        (
            "date drill-down: day",
            f"?created_at__year={now.year}&created_at__month={now.month}&created_at__day={now.day}",
        ),
        ("page 50", "?p=50"),
        ("detail view (one row)", None),
    ]
    from audit.models import AuditEvent

    some_pk = AuditEvent.objects.order_by("-id").values_list("pk", flat=True).first()
    results = []
    for label, query in pages:
        target = (
            reverse("admin:audit_auditevent_change", args=[some_pk])
            if query is None
            else url + query
        )
        times = []
        queries = 0
        sql_ms = 0.0
        status = 0
        size = 0
        for attempt in range(3):
            connection.force_debug_cursor = False
            with CaptureQueriesContext(connection) as ctx:
                t0 = time.perf_counter()
                resp = client.get(target)
                times.append((time.perf_counter() - t0) * 1000)
            status = resp.status_code
            size = len(resp.content)
            if attempt == 0:
                queries = len(ctx.captured_queries)
                sql_ms = sum(float(q.get("time") or 0) for q in ctx.captured_queries) * 1000
                slowest = sorted(
                    ctx.captured_queries, key=lambda q: float(q.get("time") or 0), reverse=True
                )[:2]
        results.append(
            {
                "slowest_sql": [
                    {"ms": round(float(q.get("time") or 0) * 1000, 1), "sql": q["sql"][:600]}
                    for q in slowest
                ],
                "page": label,
                "url": target,
                "status": status,
                "bytes": size,
                "first_ms": round(times[0], 1),
                "median_ms": round(statistics.median(times), 1),
                "queries": queries,
                "sql_ms_first": round(sql_ms, 1),
            }
        )
    return results


def time_export(env: dict[str, str], formats: list[str]) -> list[dict[str, Any]]:
    # the same command exporting nothing: the process's own footprint, for comparison
    idle = run_with_rusage(
        [PY, "manage.py", "audit_export", "--since", "2000-01-01", "--until", "2000-01-02"],
        env=env,
        timeout=300,
    )
    out: list[dict[str, Any]] = [
        {"format": "csv (0 rows: process baseline)", **idle, "output_mib": 0.0, "lines": 1}
    ]
    for fmt in formats:
        target = RESULTS / f".audit-export-{os.getpid()}.{fmt}"
        try:
            stats = run_with_rusage(
                [PY, "manage.py", "audit_export", "--format", fmt, "--output", str(target)],
                env=env,
                timeout=900,
            )
            size = target.stat().st_size if target.exists() else 0
            with target.open("rb") as fh:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        finally:
            with contextlib.suppress(OSError):
                target.unlink()
        out.append({"format": fmt, **stats, "output_mib": round(size / 2**20, 1), "lines": lines})
    return out


def time_prune(env: dict[str, str], total_rows: int) -> dict[str, Any]:
    from django.db import connection

    half_days = AUDIT_DAYS // 2
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM audit_auditevent WHERE created_at < now() - %s::interval",
            [f"{half_days} days"],
        )
        qualifying = int(cur.fetchone()[0])
    stats = run_with_rusage(
        [PY, "manage.py", "audit_prune", "--older-than", f"{half_days}d", "--yes"],
        env=env,
        timeout=900,
    )
    after = audit_count()
    return {
        "older_than": f"{half_days}d",
        "rows_before": total_rows,
        "qualifying": qualifying,
        "rows_after": after,
        "deleted": total_rows - after,
        **stats,
    }


# --- the load matrix -------------------------------------------------------------------------


# --- sealing, verification and the overview at scale ---------------------------------------------


def seal_key(env: dict[str, str]) -> dict[str, str]:
    """A throwaway Ed25519 seal key for the bench's DEBUG=0 children (never SECRET_KEY)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f".audit-seal-key-{os.getpid()}.pem"
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    return {**env, "AUDIT_SEAL_KEY_PATH": str(path), "AUDIT_SETTLE_SECONDS": "10"}


def drop_seal_key() -> None:
    with contextlib.suppress(OSError):
        (RESULTS / f".audit-seal-key-{os.getpid()}.pem").unlink()


def _seal_stats(cmd: list[str], env: dict[str, str], rows: int) -> dict[str, Any]:
    stats = run_with_rusage(cmd, env=env, timeout=1800)
    wall = stats.get("wall_s") or 0
    return {**stats, "rows": rows, "rows_per_s": round(rows / wall) if wall else None}


def time_seal(env: dict[str, str]) -> dict[str, Any]:
    """``audit_seal`` over every row (the first run on a full table), then ``audit_verify``."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_auditevent")
        total = int(cur.fetchone()[0])
    seal = _seal_stats([PY, "manage.py", "audit_seal"], env, total)
    with connection.cursor() as cur:
        cur.execute("SELECT count(*), coalesce(sum(row_count), 0) FROM audit_auditseal")
        seals, sealed = (int(v) for v in cur.fetchone())
        cur.execute("SELECT count(*) FROM audit_auditrollup")
        rollup_rows = int(cur.fetchone()[0])
        cur.execute("SELECT pg_total_relation_size('audit_auditseal')")
        seal_mib = round(int(cur.fetchone()[0]) / 2**20, 1)
    seal.update(
        {
            "seals": seals,
            "rows_sealed": sealed,
            "rollup_rows": rollup_rows,
            "seal_table_mib": seal_mib,
        }
    )
    verify = _seal_stats([PY, "manage.py", "audit_verify"], env, sealed)
    # An insert racing the sealer: the request path takes no lock the sealer holds, so an INSERT
    # during a seal run costs what it costs without one (measured by the load phase otherwise).
    return {"seal": seal, "verify": verify}


def time_overview(label: str) -> list[dict[str, Any]]:
    """The overview at each preset (and narrowed), as a logged-in staff user."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    User = get_user_model()
    user, _ = User.objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    pages = [
        ("1h", "?window=1h"),
        ("24h", "?window=24h"),
        ("7d", "?window=7d"),
        ("30d", "?window=30d"),
        ("30d, tenant-07", "?window=30d&tenant=tenant-07"),
        ("30d, tool get_todo", "?window=30d&tool=get_todo"),
        ("30d, client-137", "?window=30d&client_id=client-137"),
    ]
    results = []
    for name, query in pages:
        times = []
        queries, slowest, status = 0, [], 0
        for attempt in range(3):
            with CaptureQueriesContext(connection) as ctx:
                t0 = time.perf_counter()
                resp = client.get("/admin/audit/overview/" + query)
                times.append((time.perf_counter() - t0) * 1000)
            status = resp.status_code
            if attempt == 0:
                queries = len(ctx.captured_queries)
                slowest = sorted(
                    ctx.captured_queries, key=lambda q: float(q.get("time") or 0), reverse=True
                )[:3]
        results.append(
            {
                "state": label,
                "page": f"overview {name}",
                "status": status,
                "first_ms": round(times[0], 1),
                "median_ms": round(statistics.median(times), 1),
                "queries": queries,
                "slowest_sql": [
                    {"ms": round(float(q.get("time") or 0) * 1000, 1), "sql": q["sql"][:400]}
                    for q in slowest
                ],
            }
        )
    return results
