"""The reference project's PostgreSQL options: server-side binding, and statements prepared
after a few uses on a connection (``DATABASE_PREPARE_THRESHOLD``; empty: never, as behind a
pooler in transaction mode), with a clear error for a value that is neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.db import connection

from audit.recorder import record
from tests.servers import ROOT

_SHOW = (
    "import json, config.settings as s; "
    "o = s.DATABASES['default']['OPTIONS']; "
    "print(json.dumps([o.get('server_side_binding'), o.get('prepare_threshold')]))"
)


def _options(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    full.update(DATABASE_URL="postgres://postgres@127.0.0.1:5432/unused", SECRET_KEY="x", **env)
    return subprocess.run(
        [sys.executable, "-c", _SHOW], cwd=ROOT, env=full, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, [True, 5]),
        ({"DATABASE_PREPARE_THRESHOLD": "0"}, [True, 0]),
        ({"DATABASE_PREPARE_THRESHOLD": ""}, [True, None]),
        ({"DATABASE_PREPARE_THRESHOLD": " 12 "}, [True, 12]),
    ],
)
def test_prepare_threshold_from_the_environment(
    env: dict[str, str], expected: list[object]
) -> None:
    done = _options(**env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected


@pytest.mark.parametrize("bad", ["five", "-1", "2.5", "٣"])
def test_an_unusable_prepare_threshold_is_a_clear_error(bad: str) -> None:
    done = _options(DATABASE_PREPARE_THRESHOLD=bad)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "DATABASE_PREPARE_THRESHOLD must be a whole number >= 0" in done.stderr
    assert repr(bad) in done.stderr


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's prepared statements")
def test_the_audit_insert_is_prepared_after_a_few_calls(transactional_db: None) -> None:
    """What ``audit.recorder`` says: its one statement is planned once per connection."""
    connection.ensure_connection()
    threshold = connection.connection.prepare_threshold
    assert threshold == connection.settings_dict["OPTIONS"]["prepare_threshold"] == 5
    for i in range(threshold + 1):
        record(outcome="ok", status=200, request_id=f"prepared-{i}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any(s.startswith('INSERT INTO "audit_auditevent"') for s in prepared), prepared
