"""``audit_prune`` and ``audit_export``, and the time parsing they share."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from audit.export import EXPORT_FIELDS
from audit.models import AuditEvent, Outcome
from audit.sealing import seal_pending
from audit.timeparse import parse_age, parse_instant

pytestmark = pytest.mark.django_db


class FakeTTY(io.StringIO):
    """A terminal (for stdin: the operator's typed answer; for stderr: what was shown)."""

    def isatty(self) -> bool:
        return True


def make(n: int, *, age: timedelta, prefix: str = "r", **fields: Any) -> list[AuditEvent]:
    now = timezone.now()
    defaults: dict[str, Any] = {"outcome": Outcome.OK, "status": 200, "method": "tools/call"}
    defaults.update(fields)
    return AuditEvent.objects.bulk_create(
        AuditEvent(created_at=now - age, request_id=f"{prefix}{i}", **defaults) for i in range(n)
    )


def run(name: str, *args: str, **kwargs: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=out, stderr=err, **kwargs)
    return out.getvalue(), err.getvalue()


# --- audit_prune -------------------------------------------------------------------------------


def sealed(n: int, *, age: timedelta, prefix: str = "r") -> list[AuditEvent]:
    rows = make(n, age=age, prefix=prefix)
    seal_pending(block_rows=n)
    return rows


# (Whole-block retention, the chain after pruning and the trigger: tests/test_audit_sealing.py.)


def test_prune_with_yes_deletes_blocks_past_the_default_retention():
    sealed(3, age=timedelta(days=91), prefix="old")
    sealed(2, age=timedelta(days=89), prefix="new")
    out, _ = run("audit_prune", "--yes")
    assert "Deleted 3 audit event(s)" in out
    assert sorted(
        AuditEvent.objects.filter(method="tools/call").values_list("request_id", flat=True)
    ) == ["new0", "new1"]


@override_settings(AUDIT_RETENTION_DAYS=5)
def test_prune_default_age_follows_the_setting():
    sealed(1, age=timedelta(days=6), prefix="old")
    sealed(1, age=timedelta(days=4), prefix="new")
    out, _ = run("audit_prune", "--yes")
    assert "Deleted 1 audit event(s)" in out
    assert list(
        AuditEvent.objects.filter(method="tools/call").values_list("request_id", flat=True)
    ) == ["new0"]


@pytest.mark.parametrize(
    ("age", "kept"),
    [("12h", {"h0"}), ("2d", {"h0", "d0"}), ("1w", {"h0", "d0"}), ("90D", {"h0", "d0", "w0"})],
)
def test_prune_older_than_units(age, kept):
    sealed(1, age=timedelta(days=8), prefix="w")
    sealed(1, age=timedelta(hours=13), prefix="d")
    sealed(1, age=timedelta(hours=1), prefix="h")
    run("audit_prune", "--older-than", age, "--yes")
    remaining = set(
        AuditEvent.objects.filter(method="tools/call").values_list("request_id", flat=True)
    )
    assert remaining == kept


def test_prune_with_nothing_to_delete():
    sealed(2, age=timedelta(days=1))
    out, _ = run("audit_prune", "--yes")
    assert "Nothing to delete" in out
    assert AuditEvent.objects.count() == 2


@pytest.mark.parametrize(
    "value",
    ["90", "90x", "d", "", "-5d", "0d", "1.5d", "1m", "90 days", "9999999999d", "999999999w"],
)
def test_prune_rejects_bad_ages(value):
    make(1, age=timedelta(days=400))
    with pytest.raises(CommandError, match="--older-than"):
        run("audit_prune", "--older-than", value, "--yes")
    assert AuditEvent.objects.count() == 1


@pytest.mark.parametrize("size", ["0", "-1", "1000000"])
def test_prune_rejects_bad_batch_sizes(size):
    with pytest.raises(CommandError, match="--batch-size"):
        run("audit_prune", "--batch-size", size, "--yes")


def test_prune_refuses_without_yes_when_not_a_terminal():
    sealed(2, age=timedelta(days=400))
    sealed(1, age=timedelta(days=1))
    with pytest.raises(CommandError, match="--yes"):
        run("audit_prune", stdin=io.StringIO("y\n"))
    assert AuditEvent.objects.count() == 3


def test_prune_asks_on_a_terminal():
    sealed(2, age=timedelta(days=400))
    sealed(1, age=timedelta(days=1))
    out, _ = run("audit_prune", stdin=FakeTTY("y\n"))
    assert "Delete 2 audit event(s) in 1 sealed block(s)" in out and "[y/N]" in out
    assert AuditEvent.objects.filter(method="tools/call").count() == 1


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_prune_aborts_unless_the_operator_agrees(answer):
    sealed(2, age=timedelta(days=400))
    sealed(1, age=timedelta(days=1))
    with pytest.raises(CommandError, match="Aborted"):
        run("audit_prune", stdin=FakeTTY(answer))
    assert AuditEvent.objects.count() == 3


# --- audit_export ------------------------------------------------------------------------------


@pytest.fixture
def rows() -> None:
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                created_at=datetime(2025, 1, 10, 8, 0, tzinfo=UTC),
                request_id="jan",
                tenant="acme",
                client_id="c1",
                subject="alice",
                tool="create_todo",
                outcome=Outcome.OK,
                status=200,
                duration_ms=1.25,
                arguments={"title": 'milk, "2" litres'},
            ),
            AuditEvent(
                created_at=datetime(2025, 2, 10, 8, 0, tzinfo=UTC),
                request_id="feb",
                tenant="globex",
                client_id="c2",
                outcome=Outcome.DENIED,
                status=403,
                user_agent="=HYPERLINK(1)",
            ),
            AuditEvent(
                created_at=now - timedelta(hours=3),
                request_id="recent",
                tenant="acme",
                outcome=Outcome.RATE_LIMITED,
                status=429,
            ),
        ]
    )


def ids_csv(text: str) -> list[str]:
    """The exported calls' request ids (earlier exports' own audit rows left out)."""
    return [
        row["request_id"]
        for row in csv.DictReader(io.StringIO(text))
        if row["method"] != "audit/export"
    ]


def ids_jsonl(text: str) -> list[str]:
    items = [json.loads(line) for line in text.splitlines()]
    return [item["request_id"] for item in items if item["method"] != "audit/export"]


def test_export_csv_to_stdout(rows):
    out, err = run("audit_export", "--format", "csv")
    reader = csv.DictReader(io.StringIO(out))
    assert tuple(reader.fieldnames or ()) == EXPORT_FIELDS
    records = list(reader)
    assert [r["request_id"] for r in records] == ["jan", "feb", "recent"]  # oldest first
    assert json.loads(records[0]["arguments"]) == {"title": 'milk, "2" litres'}
    assert records[0]["created_at"] == "2025-01-10T08:00:00+00:00"
    assert records[0]["duration_ms"] == "1.25"
    assert records[1]["user_agent"] == "'=HYPERLINK(1)"  # no formula for spreadsheets
    assert "Exported 3 audit event(s)." in err
    assert "Exported" not in out


def test_export_jsonl_to_stdout_is_lossless(rows):
    out, err = run("audit_export", "--format", "jsonl")
    items = [json.loads(line) for line in out.splitlines()]
    assert [i["request_id"] for i in items] == ["jan", "feb", "recent"]
    assert set(items[0]) == set(EXPORT_FIELDS)
    assert items[0]["arguments"] == {"title": 'milk, "2" litres'}
    assert items[0]["status"] == 200 and items[0]["duration_ms"] == 1.25
    assert items[1]["user_agent"] == "=HYPERLINK(1)"
    assert "Exported 3" in err


def test_export_defaults_to_csv(rows):
    out, _ = run("audit_export")
    assert out.splitlines()[0] == ",".join(EXPORT_FIELDS)


def test_export_to_a_file(rows, tmp_path: Path):
    target = tmp_path / "audit.jsonl"
    out, err = run("audit_export", "--format", "jsonl", "--output", str(target))
    assert out == ""
    assert ids_jsonl(target.read_text(encoding="utf-8")) == ["jan", "feb", "recent"]
    assert f"Exported 3 audit event(s) to {target}." in err
    target = tmp_path / "audit.csv"
    run("audit_export", "-o", str(target), "--tenant", "globex")
    assert ids_csv(target.read_text(encoding="utf-8")) == ["feb"]


def test_export_filters(rows):
    assert ids_csv(run("audit_export", "--tenant", "acme")[0]) == ["jan", "recent"]
    assert ids_csv(run("audit_export", "--outcome", "denied")[0]) == ["feb"]
    assert ids_csv(run("audit_export", "--since", "2025-02-01")[0]) == ["feb", "recent"]
    assert ids_csv(run("audit_export", "--until", "2025-02-01")[0]) == ["jan"]
    window = ("--since", "2025-01-10T08:00:00Z", "--until", "2025-02-10T08:00")
    assert ids_csv(run("audit_export", *window)[0]) == ["jan"]  # since inclusive, until not
    assert ids_csv(run("audit_export", "--since", "1d")[0]) == ["recent"]
    assert ids_csv(run("audit_export", "--until", "1d")[0]) == ["jan", "feb"]
    assert ids_csv(run("audit_export", "--since", "2025-01-10T09:00:00+01:00")[0]) == [
        "jan",
        "feb",
        "recent",
    ]
    out, err = run("audit_export", "--tenant", "acme", "--outcome", "denied")
    assert ids_csv(out) == [] and out.splitlines() == [",".join(EXPORT_FIELDS)]
    assert "Exported 0" in err


def test_export_streams_in_chunks(rows):
    out, _ = run("audit_export", "--format", "jsonl", "--chunk-size", "1")
    assert ids_jsonl(out) == ["jan", "feb", "recent"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "--since"),
        (("--until", "2025-13-01"), "--until"),
        (("--since", "0d"), "--since"),
        (("--since", "2025-02-01", "--until", "2025-01-01"), "earlier"),
        (("--since", "2025-01-01", "--until", "2025-01-01"), "earlier"),
        (("--format", "xml"), "format"),
        (("--outcome", "maybe"), "outcome"),
        (("--chunk-size", "0"), "--chunk-size"),
    ],
)
def test_export_rejects_bad_input(rows, args, message):
    with pytest.raises(CommandError, match=message):
        run("audit_export", *args)


def test_export_to_an_unwritable_path(rows, tmp_path: Path):
    with pytest.raises(CommandError, match="Cannot write"):
        run("audit_export", "--output", str(tmp_path / "missing" / "audit.csv"))


def test_a_failed_export_keeps_the_earlier_file_and_leaves_no_partial_one(
    rows, tmp_path: Path, monkeypatch
):
    target = tmp_path / "audit.csv"
    run("audit_export", "--output", str(target))
    earlier = target.read_bytes()
    assert earlier.count(b"\r\n") >= 4 and (target.stat().st_mode & 0o777) == 0o600

    def broken(*args: Any, **kwargs: Any) -> Any:
        yield "id,created_at\r\n"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("audit.export.stream", broken)
    with pytest.raises(CommandError, match="No space left on device"):
        run("audit_export", "--output", str(target))
    assert target.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["audit.csv"]


def test_export_progress_only_on_a_terminal(rows, monkeypatch):
    monkeypatch.setattr("audit.management.commands.audit_export.PROGRESS_EVERY", 1)
    _, err = run("audit_export")
    assert "rows…" not in err
    tty_err = FakeTTY()
    call_command("audit_export", stdout=io.StringIO(), stderr=tty_err)
    assert "\r3 rows…" in tty_err.getvalue()
    assert "Exported 4" in tty_err.getvalue()  # the 3 rows and the first export's own row


def test_each_export_is_audited_with_its_filter_and_row_count(rows, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "ops")
    run("audit_export", "--format", "jsonl", "--tenant", "acme", "--since", "2025-01-01")
    row = AuditEvent.objects.get(method="audit/export")
    assert (row.actor, row.outcome, row.status) == ("cli:ops", "ok", 0)
    assert row.arguments == {
        "format": "jsonl",
        "filters": [["since", "2025-01-01"], ["tenant", "acme"]],
        "rows": 2,
        "completed": True,
    }


def test_a_failed_export_is_audited_as_incomplete(rows, tmp_path: Path):
    with pytest.raises(CommandError):
        run("audit_export", "--output", str(tmp_path / "missing" / "audit.csv"))
    assert AuditEvent.objects.get(method="audit/export").arguments["completed"] is False


# --- time parsing ------------------------------------------------------------------------------


def test_parse_age():
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age(" 12H ") == timedelta(hours=12)
    assert parse_age("2w") == timedelta(weeks=2)
    for bad in ("", "d", "5", "5y", "-1d", "0h", "1e3d"):
        with pytest.raises(ValueError):
            parse_age(bad)


def test_parse_instant():
    now = datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_instant("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_instant("2025-01-31T12:30") == datetime(2025, 1, 31, 12, 30, tzinfo=UTC)
    assert parse_instant("2025-01-31T12:30:00Z") == datetime(2025, 1, 31, 12, 30, tzinfo=UTC)
    assert parse_instant("2025-01-31T14:30:00+02:00") == datetime(2025, 1, 31, 12, 30, tzinfo=UTC)
    assert parse_instant("7d", now=now) == datetime(2025, 2, 22, tzinfo=UTC)
    for bad in ("", "tomorrow", "2025-02-30", "31/01/2025"):
        with pytest.raises(ValueError):
            parse_instant(bad)


def test_export_to_a_pipe_is_written_straight_through(rows, tmp_path: Path):
    import os
    import threading

    fifo = tmp_path / "export.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    run("audit_export", "--format", "jsonl", "--output", str(fifo))
    reader.join(timeout=30)
    lines = received[0].decode().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["id"] for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.fifo"]  # no temporary file


def test_export_through_a_symlink_replaces_the_target_not_the_link(rows, tmp_path: Path):
    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "latest.csv"
    link.symlink_to(target)
    run("audit_export", "--output", str(link))
    assert link.is_symlink() and target.read_text().startswith("id,")
