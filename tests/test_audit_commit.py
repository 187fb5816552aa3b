"""``record(..., commit=True)``: a write call's audit row carries its transaction's COMMIT in the
same round trip (PostgreSQL), and every way that can fail leaves what it left before."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from psycopg.pq import TransactionStatus

from audit.models import AuditEvent
from audit.recorder import CommitFailed, record
from mcpauth import rls
from mcpauth.models import Tenant
from tests.hurried.models import Comment
from todos.models import Todo

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the row carries the COMMIT on PostgreSQL only"
)


@pytest.fixture
def other() -> Iterator[psycopg.Connection]:
    """A second session on the test database: it sees only what was committed."""
    s = connection.settings_dict
    with psycopg.connect(
        host=s["HOST"], port=s["PORT"] or 5432, user=s["USER"], dbname=s["NAME"], autocommit=True
    ) as conn:
        yield conn


def _committed_rows(other: psycopg.Connection, request_id: str) -> int:
    row = other.execute(
        "SELECT count(*) FROM audit_auditevent WHERE request_id = %s", [request_id]
    ).fetchone()
    assert row is not None
    return int(row[0])


def _status() -> TransactionStatus:
    assert connection.connection is not None
    return connection.connection.info.transaction_status


def test_the_row_commits_the_outermost_block(transactional_db: None, other) -> None:
    tenant = Tenant.objects.create(external_id="acme")
    done: list[str] = []
    with transaction.atomic():
        Todo.all_tenants.create(tenant=tenant, title="kept")
        transaction.on_commit(lambda: done.append("hook"))
        record(outcome="ok", status=200, request_id="with-commit", commit=True)
        # committed by the row's own query: another session sees it before the block exits
        assert _status() == TransactionStatus.IDLE
        assert _committed_rows(other, "with-commit") == 1
        assert done == []  # on_commit callbacks run when the block exits, as always
    assert done == ["hook"]
    assert Todo.all_tenants.filter(title="kept").exists()
    assert AuditEvent.objects.filter(request_id="with-commit").count() == 1


def test_without_commit_or_inside_a_savepoint_the_row_waits_for_the_block(
    transactional_db: None, other
) -> None:
    with transaction.atomic():
        record(outcome="ok", status=200, request_id="plain")
        assert _status() == TransactionStatus.INTRANS
        assert _committed_rows(other, "plain") == 0
        with transaction.atomic():  # a savepoint: the row must not end the outer transaction
            record(outcome="ok", status=200, request_id="nested", commit=True)
            assert _status() == TransactionStatus.INTRANS
    assert _committed_rows(other, "plain") == _committed_rows(other, "nested") == 1


def test_a_failed_commit_keeps_nothing_and_says_why(transactional_db: None, other) -> None:
    """A deferred constraint (here the composite key that keeps a comment in its todo's tenant)
    fails at COMMIT: the row and the work before it are gone, the session is usable."""
    acme = Tenant.objects.create(external_id="acme")
    globex = Tenant.objects.create(external_id="globex")
    theirs = Todo.all_tenants.create(tenant=globex, title="theirs")
    with pytest.raises(CommitFailed) as info, transaction.atomic():
        Comment.all_tenants.create(tenant=acme, todo=theirs, text="sneaky")
        record(outcome="ok", status=200, request_id="refused", commit=True)
    assert isinstance(info.value.error, IntegrityError)
    assert rls.cross_tenant_violation(info.value.error)
    assert _committed_rows(other, "refused") == 0
    assert not Comment.all_tenants.exists()
    assert Todo.all_tenants.count() == 1  # the session works on
    record(outcome="server_error", status=200, request_id="after")
    assert _committed_rows(other, "after") == 1


def test_a_failed_insert_leaves_the_block_to_roll_back(transactional_db: None, other) -> None:
    tenant = Tenant.objects.create(external_id="acme")
    with pytest.raises(DatabaseError), transaction.atomic():
        Todo.all_tenants.create(tenant=tenant, title="rolled back")
        record(outcome="ok", status=2**40, request_id="bad", commit=True)  # out of range
    assert _committed_rows(other, "bad") == 0
    assert not Todo.all_tenants.filter(title="rolled back").exists()
