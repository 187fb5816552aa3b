"""Append-only down to the database, signed hash-chain seals, verification and retention."""

from __future__ import annotations

import io
import itertools
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import keys, sealing
from audit.models import AppendOnlyError, AuditEvent, AuditRollup, AuditSeal, Outcome
from audit.recorder import record
from audit.retention import retention_transaction
from audit.sealing import CANONICAL_FIELDS, GENESIS, seal_pending
from audit.verify import verify

pytestmark = pytest.mark.django_db
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the trigger is PostgreSQL's"
)


def make(n: int, *, age: timedelta = timedelta(minutes=5), **fields: Any) -> list[AuditEvent]:
    now = timezone.now()
    defaults: dict[str, Any] = {"outcome": Outcome.OK, "status": 200, "method": "tools/call"}
    defaults.update(fields)
    return AuditEvent.objects.bulk_create(
        AuditEvent(created_at=now - age, request_id=f"r{i}", **defaults) for i in range(n)
    )


def run(name: str, *args: str, **kwargs: Any) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO(), **kwargs)
    return out.getvalue()


def raw(sql: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])


def tamper(sql: str, params: list[Any] | None = None) -> None:
    """Change the table behind the application's back, as an intruder with SQL access would."""
    if connection.vendor == "postgresql":
        for table in ("audit_auditevent", "audit_auditseal"):
            raw(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    raw(sql, params)
    if connection.vendor == "postgresql":
        for table in ("audit_auditevent", "audit_auditseal"):
            raw(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")


def problems() -> list[str]:
    return [str(p) for p in verify().problems]


# --- append-only in the ORM (every database) ----------------------------------------------


def test_every_orm_path_that_rewrites_or_removes_rows_raises():
    first, second = make(2)
    first.tool = "changed"
    with pytest.raises(AppendOnlyError):
        first.save()
    with pytest.raises(AppendOnlyError):
        first.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=first.pk).update(tool="changed")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    upsert = AuditEvent(pk=second.pk, request_id="r1", outcome=Outcome.OK, arguments={"x": 1})
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_create(
            [upsert], update_conflicts=True, unique_fields=["id"], update_fields=["arguments"]
        )
    assert AuditEvent.objects.get(pk=second.pk).arguments != {"x": 1}
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_update([first], ["tool"])
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.update_or_create(pk=first.pk, defaults={"tool": "changed"})
    # A new instance carrying an existing pk would overwrite that row with a plain save().
    overwrite = AuditEvent(pk=second.pk, request_id="forged", outcome="ok", status=200)
    with pytest.raises(AppendOnlyError):
        overwrite.save()
    assert sorted(AuditEvent.objects.values_list("request_id", "tool")) == [
        ("r0", ""),
        ("r1", ""),
    ]


def test_seals_are_append_only_too():
    make(3)
    (seal,) = seal_pending().seals
    seal.rows_hash = "0" * 64
    with pytest.raises(AppendOnlyError):
        seal.save()
    with pytest.raises(AppendOnlyError):
        AuditSeal.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditSeal.objects.update(key_id="x")


def test_inserting_is_still_allowed():
    pk = record(outcome=Outcome.OK, status=200, request_id="fresh")
    event = AuditEvent(request_id="also-fresh", outcome="ok", status=200)
    event.save()
    assert AuditEvent.objects.filter(pk__in=[pk, event.pk]).count() == 2


# --- append-only in SQL (PostgreSQL) ---------------------------------------------------------


@on_postgresql
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET tool = 'changed'",
        "DELETE FROM audit_auditevent",
        "UPDATE audit_auditseal SET key_id = 'x'",
        "DELETE FROM audit_auditseal",
    ],
)
def test_the_database_refuses_raw_update_and_delete(sql):
    make(2)
    seal_pending()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        raw(sql)
    assert AuditEvent.objects.count() == 2 and AuditSeal.objects.count() == 1


@on_postgresql
def test_only_the_retention_transaction_may_delete_and_only_for_itself():
    rows = make(3)
    with retention_transaction("default"):
        raw("DELETE FROM audit_auditevent WHERE id = %s", [rows[0].pk])
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            raw("UPDATE audit_auditevent SET tool = 'x'")  # updates: never
    assert AuditEvent.objects.count() == 2
    # The setting was transaction-local: it is gone once that transaction ended.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        raw("DELETE FROM audit_auditevent")
    assert AuditEvent.objects.count() == 2


# --- sealing -------------------------------------------------------------------------------------


def test_canonical_fields_are_every_field_of_the_model():
    # A new AuditEvent field must be covered by a new seal version, not silently left out.
    assert set(CANONICAL_FIELDS) == {f.attname for f in AuditEvent._meta.concrete_fields}


def test_seals_of_an_earlier_version_still_verify_and_new_ones_cover_the_issuer(monkeypatch):
    """Issue 16: ``issuer`` joined the canonical row in seal version 2; version-1 seals (made
    before, without it) keep verifying, and version-2 seals notice a changed issuer."""
    old_rows = make(3, issuer="")
    with monkeypatch.context() as patch:  # the sealer as it was before the issuer existed
        patch.setattr(sealing, "VERSION", 1)
        patch.setattr(sealing, "CANONICAL_FIELDS", sealing.FIELDS_V1)
        (v1,) = seal_pending().seals
    assert (v1.version, v1.last_id) == (1, old_rows[-1].pk)
    new_rows = make(3, issuer="https://issuer-a.example")
    (v2,) = seal_pending().seals
    assert (v2.version, v2.prev_hash) == (2, v1.seal_hash)
    report = verify()
    assert report.ok and report.seals == 2 and report.rows == 6
    assert "The audit trail is intact." in run("audit_verify")
    tamper(
        "UPDATE audit_auditevent SET issuer = %s WHERE id = %s",
        ["https://issuer-b.example", new_rows[1].pk],
    )
    assert problems() == [f"row {new_rows[1].pk} was changed (seal {v2.pk})"]
    # a seal's version is signed: relabelling it breaks the seal, it cannot dodge the issuer
    tamper("UPDATE audit_auditseal SET version = 1 WHERE id = %s", [v2.pk])
    assert any("header was altered" in p for p in problems())
    # an unknown version is reported, not guessed
    tamper("UPDATE audit_auditseal SET version = 9 WHERE id = %s", [v2.pk])
    assert any("unknown seal version 9" in p for p in problems())


def test_seal_versions_only_ever_append_fields():
    versions = sorted(sealing.FIELDS_BY_VERSION)
    assert versions == list(range(1, len(versions) + 1))
    for older, newer in itertools.pairwise(versions):
        old, new = sealing.FIELDS_BY_VERSION[older], sealing.FIELDS_BY_VERSION[newer]
        assert new[: len(old)] == old and len(new) > len(old)
    assert sealing.CANONICAL_FIELDS == sealing.FIELDS_BY_VERSION[sealing.VERSION]
    assert sealing.FIELDS_BY_VERSION[2][-1] == "issuer"


def test_blocks_tile_the_ids_and_chain_with_signatures():
    rows = make(25, tool="get_todo", arguments={"n": 1.5, "s": "ü"}, client_ip="10.0.0.1")
    report = seal_pending(block_rows=10)
    seals = report.seals
    assert [(s.first_id, s.last_id, s.row_count) for s in seals] == [
        (1, rows[9].pk, 10),
        (rows[9].pk + 1, rows[19].pk, 10),
        (rows[19].pk + 1, rows[24].pk, 5),
    ]
    assert seals[0].prev_hash == GENESIS
    assert [s.prev_hash for s in seals[1:]] == [s.seal_hash for s in seals[:-1]]
    public = keys.signing_key().public_key()
    assert {s.key_id for s in seals} == {keys.key_id(public)}
    report = verify()
    assert report.ok and report.seals == 3 and report.rows == 25
    assert seal_pending().seals == []  # nothing new: nothing sealed twice


def test_rows_too_recent_wait_for_the_next_run(settings):
    settings.AUDIT_SETTLE_SECONDS = 60
    old = make(3, age=timedelta(minutes=5))
    make(2, age=timedelta(seconds=1))
    report = seal_pending()
    assert [(s.first_id, s.last_id) for s in report.seals] == [(1, old[-1].pk)]
    assert report.waiting == 2


def test_an_older_row_after_a_recent_one_waits_too(settings):
    # The horizon stops at the first recent row: nothing past it is sealed yet, whatever its age.
    settings.AUDIT_SETTLE_SECONDS = 60
    make(1, age=timedelta(minutes=5))
    recent = make(1, age=timedelta(seconds=1))
    make(1, age=timedelta(minutes=5))
    (seal,) = seal_pending().seals
    assert seal.last_id == recent[0].pk - 1


def test_sealing_keeps_the_rollup_of_exactly_the_sealed_rows():
    make(4, tenant="acme", client_id="c1", tool="get_todo")
    make(1, tenant="acme", client_id="c1", tool="get_todo", outcome=Outcome.DENIED)
    make(1, method="config/tenant.suspend", tenant="acme")
    seal_pending(block_rows=4)
    got = sorted(AuditRollup.objects.values_list("tool", "outcome", "kind", "calls"))
    assert got == [
        ("", "ok", "config", 1),
        ("get_todo", "denied", "call", 1),
        ("get_todo", "ok", "call", 4),
    ]


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_an_open_transaction_holds_the_horizon_back(settings):
    """Ids are assigned before commit: a row still in flight must not be overtaken."""
    settings.AUDIT_SETTLE_SECONDS = 0.3
    inserted, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                record(outcome=Outcome.OK, status=200, request_id="in-flight")
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    try:
        assert inserted.wait(10)
        record(outcome=Outcome.OK, status=200, request_id="committed-later-id")
        threading.Event().wait(0.6)  # both rows are now older than the settle time
        report = seal_pending()
        assert report.seals == [] and report.waiting == 1
    finally:
        release.set()
        thread.join(10)
    threading.Event().wait(0.6)
    report = seal_pending()
    assert report.rows == 2
    assert verify().ok


# --- verification ----------------------------------------------------------------------------


def test_verify_names_a_changed_row():
    rows = make(12)
    seal_pending(block_rows=5)
    tamper("UPDATE audit_auditevent SET outcome = 'denied' WHERE id = %s", [rows[6].pk])
    assert problems() == [f"row {rows[6].pk} was changed (seal {AuditSeal.objects.all()[1].pk})"]


def test_verify_names_a_deleted_row():
    rows = make(6)
    seal_pending()
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [rows[2].pk])
    assert problems() == [f"row {rows[2].pk} was deleted (seal {AuditSeal.objects.get().pk})"]


def test_verify_names_a_row_inserted_into_a_sealed_range():
    first = make(3)
    gap = first[-1].pk + 5  # ids in between were never used (say, rolled back)
    AuditEvent(
        pk=gap,
        created_at=timezone.now() - timedelta(minutes=5),
        request_id="x",
        outcome="ok",
        status=200,
    ).save()
    if connection.vendor == "postgresql":
        raw("SELECT setval('audit_auditevent_id_seq', %s)", [gap])
    seal_pending()
    AuditEvent(pk=gap - 2, request_id="forged", outcome="ok", status=200).save()
    assert problems() == [f"row {gap - 2} was inserted (seal {AuditSeal.objects.get().pk})"]


def test_verify_names_an_altered_seal_and_a_broken_chain():
    make(9)
    _, s2, _ = seal_pending(block_rows=3).seals
    tamper("UPDATE audit_auditseal SET rows_hash = %s WHERE id = %s", ["0" * 64, s2.pk])
    where = f"seal {s2.pk} (rows {s2.first_id}-{s2.last_id})"
    assert problems() == [
        f"{where}: its header was altered (seal_hash mismatch)",
        f"{where}: the signature does not verify",
        f"seal {s2.pk}: its rows do not give rows_hash",
    ]


def test_verify_notices_a_removed_seal():
    make(9)
    s1, s2, s3 = seal_pending(block_rows=3).seals
    tamper("DELETE FROM audit_auditseal WHERE id = %s", [s2.pk])
    where = f"seal {s3.pk} (rows {s3.first_id}-{s3.last_id})"
    assert problems()[0] == f"{where}: does not link to seal {s1.pk} (prev_hash mismatch)"


def test_a_recorded_chain_head_catches_the_newest_seals_removed_with_their_rows():
    """Security review: cutting the tail (newest seals and their rows) leaves a chain that is
    valid on its own, and re-inserted rows would be sealed anew; only a head recorded outside
    the database shows it."""
    make(9)
    sealed = run("audit_seal", "--block-rows", "3")
    head = sealed.split("chain head ")[1].split(".")[0]
    *_, s3 = AuditSeal.objects.order_by("first_id")
    assert head == s3.seal_hash and f"Chain head: {head}" in run("audit_verify")
    assert "intact" in run("audit_verify", "--expect-head", head)
    tamper("DELETE FROM audit_auditevent WHERE id >= %s", [s3.first_id])
    tamper("DELETE FROM audit_auditseal WHERE id = %s", [s3.pk])
    assert verify().ok  # the shortened chain is consistent in itself
    with pytest.raises(CommandError) as caught:
        run("audit_verify", "--expect-head", head)
    assert caught.value.returncode == 1
    assert f"recorded chain head {head[:16]} is no longer in the chain" in str(caught.value)
    # all of it gone: without a head "no seals yet", with one, tampering
    tamper("DELETE FROM audit_auditevent")
    tamper("DELETE FROM audit_auditseal")
    assert "No seals to check yet" in run("audit_verify")
    with pytest.raises(CommandError, match="no longer in the chain"):
        run("audit_verify", "--expect-head", head)
    with pytest.raises(CommandError) as bad:
        run("audit_verify", "--expect-head", "not-a-hash")
    assert bad.value.returncode == 2


def test_verify_refuses_an_unknown_signing_key(settings, tmp_path):
    make(2)
    seal_pending()
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings.AUDIT_SEAL_KEY_PATH = str(other)
    (problem,) = problems()
    assert "signed by unknown key" in problem


def test_a_verifier_needs_only_the_public_key(settings, tmp_path):
    make(2)
    seal_pending()
    public = tmp_path / "seal.pub"
    public.write_text(run("audit_seal", "--print-public-key"))
    settings.AUDIT_SEAL_KEY_PATH = str(tmp_path / "absent.pem")
    settings.AUDIT_SEAL_VERIFY_KEYS = [str(public)]
    with pytest.raises(keys.SealKeyError):
        keys.signing_key()
    assert verify().ok


def test_audit_verify_exit_codes_and_message():
    rows = make(4)
    assert "No seals to check yet" in run("audit_verify")
    seal_pending()
    out = run("audit_verify")
    assert "Checked 1 seal(s)" in out and "The audit trail is intact." in out
    tamper("UPDATE audit_auditevent SET tenant = 'evil' WHERE id = %s", [rows[1].pk])
    with pytest.raises(CommandError) as caught:
        run("audit_verify")
    assert caught.value.returncode == 1
    assert f"row {rows[1].pk} was changed" in str(caught.value)


def test_audit_verify_since_checks_only_the_recent_blocks():
    old = make(3, age=timedelta(days=10))
    make(3, age=timedelta(minutes=5))
    seal_pending(block_rows=3)
    tamper("UPDATE audit_auditevent SET tenant = 'evil' WHERE id = %s", [old[0].pk])
    assert "intact" in run("audit_verify", "--since", "1d")
    with pytest.raises(CommandError, match=f"row {old[0].pk} was changed"):
        run("audit_verify", "--since", "30d")
    with pytest.raises(CommandError) as caught:
        run("audit_verify", "--since", "yesterday")
    assert caught.value.returncode == 2


# --- the seal command and its key ------------------------------------------------------------


def test_audit_seal_command_reports(settings):
    settings.AUDIT_SETTLE_SECONDS = 60
    make(3)
    make(1, age=timedelta(seconds=0))
    out = run("audit_seal")
    assert "Sealed 3 row(s) in 1 block(s)" in out and "1 newer row(s) wait" in out
    assert "Nothing to seal." in run("audit_seal")


def test_production_without_a_key_refuses_to_seal(settings):
    settings.DEBUG = False
    settings.AUDIT_DEV_SEAL_KEY = False
    settings.AUDIT_SEAL_KEY_PATH = ""
    make(1)
    with pytest.raises(CommandError, match="AUDIT_SEAL_KEY_PATH"):
        run("audit_seal")
    assert not AuditSeal.objects.exists()
    from audit.checks import check_seal_key_configured

    assert [m.id for m in check_seal_key_configured()] == ["audit.E002"]
    settings.AUDIT_SEAL_VERIFY_KEYS = ["/etc/mcp/audit-seal.pub"]  # a serving-only host
    assert check_seal_key_configured() == []


@pytest.mark.parametrize("content", [b"not a key", None])
def test_a_bad_key_file_is_a_system_check_error(settings, tmp_path, content):
    path = tmp_path / "seal.pem"
    if content is not None:
        path.write_bytes(content)
    settings.AUDIT_SEAL_KEY_PATH = str(path)
    from audit.checks import check_seal_keys

    (message,) = check_seal_keys()
    assert message.id == "audit.E001" and str(path) in message.msg


def test_the_development_key_is_created_private(settings, tmp_path):
    settings.AUDIT_DEV_SEAL_KEY_PATH = str(tmp_path / "audit-seal-key.pem")
    settings.AUDIT_SEAL_KEY_PATH = ""
    keys.signing_key()
    path = Path(tmp_path) / "audit-seal-key.pem"
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600


# --- retention: whole sealed blocks ------------------------------------------------------------


def test_prune_removes_whole_old_blocks_and_the_rest_still_verifies():
    make(4, age=timedelta(days=100), tenant="acme", tool="get_todo")
    make(2, age=timedelta(days=1), tenant="acme", tool="get_todo")
    s1, _, s3 = seal_pending(block_rows=2).seals  # [old old] [old old] [new new]
    out = run("audit_prune", "--yes")
    assert "Deleted 4 audit event(s) in 2 sealed block(s)" in out
    assert list(AuditSeal.objects.values_list("pk", flat=True)) == [s3.pk]
    report = verify()
    assert report.ok and report.pruned_before and report.rows == 2
    # The rollup lost exactly the pruned rows; the run itself was audited.
    calls = AuditRollup.objects.filter(kind="call").values_list("calls", flat=True)
    assert sum(calls) == 2
    prune_rows = list(AuditEvent.objects.filter(method="audit/prune").order_by("id"))
    assert [r.arguments["rows"] for r in prune_rows] == [2, 2]  # one per block
    assert all(r.actor.startswith("cli:") for r in prune_rows)
    assert prune_rows[0].arguments["first_id"] == s1.first_id
    assert prune_rows[1].arguments["last_id"] == s3.first_id - 1


def test_a_prune_that_fails_midway_is_audited_with_what_it_deleted(monkeypatch):
    from audit import retention

    make(6, age=timedelta(days=100))
    make(2, age=timedelta(days=1))
    s1, *_ = seal_pending(block_rows=2).seals  # three old blocks, then a new one
    original, calls = retention.prune_block, []

    def fails_on_the_second(seal: Any, **kwargs: Any) -> int:
        calls.append(seal.pk)
        if len(calls) == 2:
            raise DatabaseError("connection lost")
        return original(seal, **kwargs)

    monkeypatch.setattr(retention, "prune_block", fails_on_the_second)
    with pytest.raises(CommandError, match=r"stopped after 2 audit event\(s\) in 1 block"):
        run("audit_prune", "--yes")
    prune_row = AuditEvent.objects.get(method="audit/prune")  # the one block that went
    assert prune_row.arguments["rows"] == 2 and prune_row.arguments["last_id"] == s1.last_id
    assert verify().ok  # what is left is one unbroken chain, its start recorded


def test_a_block_is_never_gone_without_its_prune_row(monkeypatch):
    """The record is written in the block's own transaction: if it cannot be written (here:
    the recorder fails), the block stays too."""
    from audit.management.commands import audit_prune

    make(4, age=timedelta(days=100))
    make(2, age=timedelta(days=1))
    seal_pending(block_rows=2)

    def fails(**kwargs: Any) -> int:
        raise DatabaseError("the audit insert failed")

    monkeypatch.setattr(audit_prune, "record_prune", fails)
    with pytest.raises(CommandError, match=r"stopped after 0 audit event"):
        run("audit_prune", "--yes")
    assert AuditSeal.objects.count() == 3 and AuditEvent.objects.count() == 6
    assert verify().ok


def test_removing_the_oldest_blocks_without_audit_prune_is_not_mistaken_for_retention():
    make(4, age=timedelta(days=100))
    make(2, age=timedelta(days=1))
    s1, s2, _ = seal_pending(block_rows=2).seals
    tamper("DELETE FROM audit_auditevent WHERE id <= %s", [s1.last_id])
    tamper("DELETE FROM audit_auditseal WHERE id = %s", [s1.pk])
    assert problems() == [
        f"the chain starts at seal {s2.pk} (rows from {s2.first_id}), but no audit/prune run "
        "records deleting the rows before it"
    ]


def test_successive_prune_runs_each_leave_the_record_of_the_current_start():
    make(2, age=timedelta(days=200))
    make(2, age=timedelta(days=100))
    make(2, age=timedelta(days=1))
    seal_pending(block_rows=2)
    run("audit_prune", "--yes", "--older-than", "150d")
    assert verify().ok
    run("audit_prune", "--yes", "--older-than", "50d")
    report = verify()
    assert report.ok and report.pruned_before and report.rows == 2
    assert AuditEvent.objects.filter(method="audit/prune").count() == 2  # a block each


def test_prune_never_splits_a_block_nor_takes_unsealed_rows():
    make(3, age=timedelta(days=100))
    make(1, age=timedelta(days=1))
    seal_pending(block_rows=4)  # one block with a recent row in it
    make(2, age=timedelta(days=100))  # old but unsealed (ids after the block)
    out = run("audit_prune", "--yes")
    assert "Nothing to delete" in out and "Kept 5 older row(s)" in out
    assert AuditEvent.objects.count() == 6


def test_prune_keeps_the_newest_seal_so_the_chain_continues():
    make(2, age=timedelta(days=100))
    (only,) = seal_pending().seals
    run("audit_prune", "--yes")
    assert AuditSeal.objects.get().pk == only.pk
    make(1)
    (nxt,) = seal_pending().seals
    assert nxt.prev_hash == only.seal_hash and verify().ok


def test_a_row_slipped_in_below_the_first_kept_seal_is_found():
    make(2, age=timedelta(days=100))
    make(2, age=timedelta(days=1))
    seal_pending(block_rows=2)
    run("audit_prune", "--yes")
    AuditEvent(pk=1, request_id="forged", outcome="ok", status=200).save()
    assert problems() == ["row 1 was inserted before the first seal"]


def test_prune_dry_run_and_confirmation():
    make(3, age=timedelta(days=100))
    make(1, age=timedelta(days=1))
    seal_pending(block_rows=3)
    out = run("audit_prune", "--dry-run", stdin=io.StringIO(""))
    assert "would delete 3 audit event(s) in 1 sealed block(s)" in out
    with pytest.raises(CommandError, match="--yes"):
        run("audit_prune", stdin=io.StringIO("y\n"))
    assert AuditEvent.objects.count() == 4


def test_prune_in_batches_reports_progress():
    make(7, age=timedelta(days=200))
    make(1, age=timedelta(days=1))
    seal_pending(block_rows=7)
    out = run("audit_prune", "--older-than", "30d", "--batch-size", "3", "--yes")
    assert out.splitlines()[0] == "deleted 7/7"
    assert AuditEvent.objects.filter(method="tools/call").count() == 1
