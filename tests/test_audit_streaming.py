"""``audit_export --follow`` for a SIEM, secret scrubbing, and exports that cannot be split."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from audit import export
from audit.models import AuditEvent, Outcome
from audit.recorder import record
from audit.redaction import scrub_text
from tests.conftest import MCP_ACCEPT, call_tool

pytestmark = pytest.mark.django_db


def follow(*args: str) -> tuple[list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "audit_export",
        "--follow",
        "--format",
        "jsonl",
        "--poll",
        "0.05",
        *args,
        stdout=out,
        stderr=err,
    )
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def calls(items: list[dict[str, Any]]) -> list[str]:
    return [i["request_id"] for i in items if i["method"] != "audit/export"]


def add(request_id: str, **fields: Any) -> int:
    return record(
        outcome=Outcome.OK, status=200, request_id=request_id, method="tools/call", **fields
    )


@pytest.mark.django_db(transaction=True)
def test_follow_streams_rows_as_they_commit_in_id_order(settings):
    settings.AUDIT_SETTLE_SECONDS = 0.1
    first = add("a")
    add("b")
    time.sleep(0.2)

    def writer() -> None:
        try:
            for name in ("c", "d", "e"):
                time.sleep(0.15)
                add(name)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    items, err = follow("--after-id", str(first), "--idle-exit", "2.0")
    thread.join(10)
    assert calls(items) == ["b", "c", "d", "e"]
    ids = [i["id"] for i in items]
    assert ids == sorted(ids) and ids[0] > first
    # The stream itself is audited, and says where to resume.
    assert [i["method"] for i in items].count("audit/export") == 1
    assert f"resume with --after-id {ids[-1]}" in err
    # A restart from there repeats nothing.
    again, _ = follow("--after-id", str(ids[-1]), "--idle-exit", "0.3")
    assert calls(again) == []


def test_follow_waits_for_rows_to_settle(settings):
    settings.AUDIT_SETTLE_SECONDS = 60
    AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                created_at=timezone.now() - timedelta(minutes=5),
                request_id="old",
                outcome="ok",
                status=200,
                method="tools/call",
            ),
        ]
    )
    recent = add("recent")
    items, err = follow("--idle-exit", "0.2")
    assert calls(items) == ["old"]
    assert f"resume with --after-id {recent - 1}" in err


def test_follow_keeps_the_filter_and_moves_past_other_rows(settings):
    settings.AUDIT_SETTLE_SECONDS = 0
    add("x1", tenant="acme")
    add("y1", tenant="globex")
    last = add("x2", tenant="acme")
    items, err = follow("--tenant", "acme", "--idle-exit", "0.2")
    assert calls(items) == ["x1", "x2"]
    # The position passed the other tenant's rows (and the stream's own audit row) too.
    resume = int(err.rsplit("--after-id ", 1)[1].rstrip(".\n"))
    assert resume > last


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--follow", "--until", "1d"], "--until"),
        (["--idle-exit", "1"], "--follow"),
        (["--follow", "--output", "x.jsonl"], "stdout"),
        (["--after-id", "-1"], "--after-id"),
        (["--follow", "--poll", "0"], "--poll"),
    ],
)
def test_follow_option_errors(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("audit_export", *args, stdout=io.StringIO(), stderr=io.StringIO())


def test_after_id_without_follow_exports_the_rest():
    first = add("a")
    add("b")
    out = io.StringIO()
    call_command(
        "audit_export",
        "--format",
        "jsonl",
        "--after-id",
        str(first),
        stdout=out,
        stderr=io.StringIO(),
    )
    assert calls([json.loads(line) for line in out.getvalue().splitlines()]) == ["b"]


# --- scrubbing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("failed with api_key=abc123 for x", "failed with api_key=[redacted] for x"),
        ("password: hunter2, user=bob", "password: [redacted], user=bob"),
        ('{"client_secret": "zzz"}', '{"client_secret": "[redacted]"}'),
        ("use sk-abcdefghijklmnopqrstuv now", "use [redacted-key] now"),
        ("key sk-proj-abcdefghijklmnop1234", "key [redacted-key]"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [redacted]"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123", "[redacted-key]"),
        ("AKIAIOSFODNN7EXAMPLE", "[redacted-key]"),
        ("Mozilla/5.0 (X11; Linux x86_64) at 10:30", "Mozilla/5.0 (X11; Linux x86_64) at 10:30"),
        # the security review's misses
        ("Authorization: Token 0123456789abcdef0123", "Authorization: [redacted]"),
        ("db postgres://app:S3cretPw@db:5432/x", "db postgres://app:[redacted]@db:5432/x"),
        (
            "k -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY----- .",
            "k [redacted-private-key] .",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEcut short", "[redacted-private-key]"),
        ("pwd=hunter2&x=1", "pwd=[redacted]&x=1"),
        ('{\\"password\\": \\"hunter2\\"}', '{\\"password\\": \\"[redacted]\\"}'),
        ("https://example.com/a:b", "https://example.com/a:b"),
        ("password=P@ss\\w0rd!", "password=[redacted]"),
        ("pwd=C:\\Users\\bob", "pwd=[redacted]"),
        ("redis://:secretpw@host:6379/0", "redis://:[redacted]@host:6379/0"),
        ("postgres://user:p@ss@host/db", "postgres://user:[redacted]@host/db"),
        (
            "see http://host:8080/path and user@example.com",
            "see http://host:8080/path and user@example.com",
        ),
        ("token validation failed", "token validation failed"),
    ],
)
def test_secret_shaped_text_is_scrubbed(text, expected):
    assert scrub_text(text) == expected


def test_a_secret_shaped_argument_name_is_scrubbed_too():
    from audit.redaction import redact

    assert redact({"sk-abcdefghijklmnopqrstuvwx": 1, "title": "ok"}) == {
        "[redacted-key]": 1,
        "title": "ok",
    }
    # two names that scrub alike keep both values
    both = redact({"sk-" + "A" * 20: "one", "sk-" + "B" * 20: "two"})
    assert sorted(both.values()) == ["one", "two"]


def test_hostile_long_text_is_cut_before_it_is_scrubbed():
    from audit.redaction import SCRUB_LIMIT, redact

    for hostile in ("a+" * 500_000 + ":", "x" * 1_000_000 + "=", "password=" * 100_000):
        assert len(scrub_text(hostile)) <= SCRUB_LIMIT
        assert redact(hostile).endswith(f"…[truncated {len(hostile)} chars]")


def test_secrets_in_free_text_never_reach_the_table():
    pk = record(
        outcome=Outcome.TOOL_ERROR,
        status=200,
        request_id="r",
        method="tools/call",
        tool="create_todo",
        error_message="upstream refused api_key=live-123456 (password=hunter2)",
        user_agent="bot sk-abcdefghijklmnopqrstuv",
        arguments={"note": "my password: hunter2", "api_key": "live-123456"},
    )
    row = AuditEvent.objects.get(pk=pk)
    stored = json.dumps([row.error_message, row.user_agent, row.arguments])
    for secret in ("live-123456", "hunter2", "sk-abcdefghijklmnopqrstuv"):
        assert secret not in stored
    assert row.arguments == {"note": "my password: [redacted]", "api_key": "[redacted]"}


# --- control characters and CSV records ----------------------------------------------------------


def test_control_characters_in_method_and_tool_are_replaced_before_storing():
    pk = record(
        outcome=Outcome.UNAUTHENTICATED,
        status=401,
        request_id="r\n1",
        method="tools/call\r\n",
        tool='x\r=HYPERLINK("http://evil")\x00\x1b[31m',
    )
    row = AuditEvent.objects.get(pk=pk)
    assert row.tool == 'x\ufffd=HYPERLINK("http://evil")\ufffd\ufffd[31m'
    assert row.method == "tools/call\ufffd\ufffd" and row.request_id == "r\ufffd1"


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nb", "=1+1\r=2"])
def test_csv_quotes_any_value_with_cr_or_lf(value):
    row = [value if name == "user_agent" else "" for name in export.EXPORT_FIELDS]
    line = export.encode(row, "csv")
    assert line.endswith("\r\n")
    records = list(csv.reader(io.StringIO(export.header("csv") + line, newline="")))
    assert len(records) == 2
    cell = records[1][export.EXPORT_FIELDS.index("user_agent")]
    assert cell.lstrip("'") == value


def test_every_text_cell_keeps_the_formula_prefix():
    row = {name: "" for name in export.EXPORT_FIELDS}
    row.update(tool="=cmd", subject="+1", tenant="-2", client_id="@x", method="\tz", id=1)
    line = export.encode([row[n] for n in export.EXPORT_FIELDS], "csv")
    cells = dict(zip(export.EXPORT_FIELDS, next(csv.reader(io.StringIO(line))), strict=True))
    assert (cells["tool"], cells["subject"], cells["tenant"], cells["client_id"]) == (
        "'=cmd",
        "'+1",
        "'-2",
        "'@x",
    )
    assert cells["method"] == "'\tz"


def test_jsonl_escapes_unicode_line_separators():
    row = [("a\u2028b" if name == "error_message" else "") for name in export.EXPORT_FIELDS]
    line = export.encode(row, "jsonl")
    assert line.count("\n") == 1 and len(line.splitlines()) == 1
    assert json.loads(line)["error_message"] == "a\u2028b"


def test_an_anonymous_tool_name_cannot_plant_a_csv_record(live):
    """Issue 12 item 7: a `tools/call` named `x\\r=HYPERLINK(...)` with no token (refused before
    admission since it is no tool name; stored escaped, the CR as a backslash and an `r`)."""
    body = call_tool('x\r=HYPERLINK("http://evil.example")')
    resp = httpx2.post(live.url, json=body, headers=MCP_ACCEPT)
    assert resp.status_code == 400
    row = AuditEvent.objects.get(outcome="invalid_request")
    assert "\r" not in row.tool and row.tool.startswith("x\\r=")
    out = io.StringIO()
    call_command("audit_export", "--format", "csv", stdout=out, stderr=io.StringIO())
    records = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert len(records) == 2  # the header and the one row
    for record_ in records[1:]:
        for cell in record_:
            assert not cell.startswith(("=", "+", "-", "@"))


def test_the_admin_csv_export_keeps_a_bare_cr_inside_its_record(client):
    from django.contrib.auth.models import User
    from django.urls import reverse

    record(
        outcome=Outcome.UNAUTHENTICATED,
        status=401,
        request_id="cr",
        method="tools/call",
        error_message='bad\r=HYPERLINK("http://evil.example")',
        user_agent="a\rb",
    )
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    response = client.get(reverse("admin:audit_auditevent_export"), {"format": "csv"})
    text = b"".join(response.streaming_content).decode()
    records = list(csv.reader(io.StringIO(text, newline="")))
    assert len(records) == 2
    row = dict(zip(export.EXPORT_FIELDS, records[1], strict=True))
    assert row["error_message"] == 'bad\r=HYPERLINK("http://evil.example")'
    assert row["user_agent"] == "a\rb"
