"""The read-only audit admin: filters, exact search, detail, export, permissions, no COUNT(*)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection, connections
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.admin_counting import EstimatedCountPaginator
from audit.export import EXPORT_FIELDS
from audit.models import AuditEvent, Outcome
from audit.recorder import record
from mcpauth.models import Tenant

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_auditevent_changelist"
EXPORT = "admin:audit_auditevent_export"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client: Client) -> Client:
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def events() -> dict[str, AuditEvent]:
    """Three rows: a tool call, a denial a day later, an unauthenticated call in 2023."""
    Tenant.objects.create(external_id="acme", name="Acme Corp")
    Tenant.objects.create(external_id="globex")
    now = timezone.now()
    rows = AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                created_at=now - timedelta(hours=1),
                request_id="req-ok",
                tenant="acme",
                client_id="client-acme",
                subject="alice",
                token_id="jti-1",
                scopes="todo:read todo:write",
                method="tools/call",
                tool="create_todo",
                outcome=Outcome.OK,
                status=200,
                duration_ms=12.5,
                client_ip="10.0.0.1",
                user_agent="pytest",
                arguments={"title": "Buy milk", "tags": ["a", "b"]},
            ),
            AuditEvent(
                created_at=now - timedelta(days=1),
                request_id="req-denied",
                tenant="globex",
                client_id="client-globex",
                subject="bob",
                method="tools/call",
                tool="delete_todo",
                outcome=Outcome.DENIED,
                status=403,
                error_code="insufficient_scope",
                error_message="missing todos.delete_todo",
                arguments={"todo_id": "x"},
            ),
            AuditEvent(
                created_at=datetime(2023, 6, 15, 12, 0, tzinfo=UTC),
                request_id="req-anon",
                method="initialize",
                outcome=Outcome.UNAUTHENTICATED,
                status=401,
            ),
        ]
    )
    return {row.request_id: row for row in rows}


def listed(response: Any) -> list[str]:
    return [row.request_id for row in response.context["cl"].result_list]


def body(response: StreamingHttpResponse) -> str:
    return b"".join(response.streaming_content).decode()  # type: ignore[arg-type]


def filter_choices(response: Any, title: str) -> list[str]:
    for spec in response.context["cl"].filter_specs:
        if str(spec.title) == title:
            return [str(c["display"]) for c in spec.choices(response.context["cl"])]
    raise AssertionError(f"no filter titled {title!r}")


def unfiltered_counts(queries: Iterable[dict[str, str]]) -> list[str]:
    """``SELECT COUNT(*) … FROM "audit_auditevent"`` with neither WHERE nor LIMIT."""
    found = []
    for query in queries:
        sql = " ".join(query["sql"].split())
        upper = sql.upper()
        if (
            re.search(r"\bCOUNT\(", upper)
            and '"AUDIT_AUDITEVENT"' in upper
            and " WHERE " not in upper
            and " LIMIT " not in upper
        ):
            found.append(sql)
    return found


# --- the changelist ----------------------------------------------------------------------------


def test_changelist_lists_rows_and_offers_exports(staff_client, events):
    response = staff_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert listed(response) == ["req-ok", "req-denied", "req-anon"]
    html = response.content.decode()
    assert "Export CSV" in html and "Export JSONL" in html
    assert "Add audit event" not in html
    assert 'name="action"' not in html  # no actions, so no bulk delete


def test_export_links_keep_the_current_query(staff_client, events):
    response = staff_client.get(reverse(CHANGELIST), {"outcome": "denied", "q": "bob", "p": "1"})
    links = response.context["export_links"]
    assert links["csv"].startswith(reverse(EXPORT) + "?")
    assert "outcome=denied" in links["csv"] and "q=bob" in links["csv"]
    assert "format=csv" in links["csv"] and "format=jsonl" in links["jsonl"]
    assert "p=" not in links["csv"]
    assert links["csv"].replace("&", "&amp;") in response.content.decode()


def test_filter_by_outcome(staff_client, events):
    response = staff_client.get(reverse(CHANGELIST), {"outcome": "denied"})
    assert listed(response) == ["req-denied"]
    assert "rate limited" in filter_choices(response, "outcome")


def test_filter_by_tool_offers_registered_tools_and_none(staff_client, events):
    import todos.mcp  # noqa: F401  (registers the tools)

    response = staff_client.get(reverse(CHANGELIST), {"tool": "create_todo"})
    assert listed(response) == ["req-ok"]
    choices = filter_choices(response, "tool")
    assert {"create_todo", "list_todos", "delete_todo"} <= set(choices)
    assert any(c.startswith("(none)") for c in choices)
    response = staff_client.get(reverse(CHANGELIST) + "?tool=")
    assert listed(response) == ["req-anon"]


def test_filter_by_tenant_uses_the_tenant_table(staff_client, events):
    Tenant.objects.create(external_id="initech")  # no audit rows, still offered
    response = staff_client.get(reverse(CHANGELIST), {"tenant": "acme"})
    assert listed(response) == ["req-ok"]
    choices = filter_choices(response, "tenant")
    assert "Acme Corp (acme)" in choices and "globex" in choices and "initech" in choices
    assert listed(staff_client.get(reverse(CHANGELIST) + "?tenant=")) == ["req-anon"]


def test_filter_by_client_offers_recent_clients(staff_client, events):
    response = staff_client.get(reverse(CHANGELIST), {"client_id": "client-globex"})
    assert listed(response) == ["req-denied"]
    choices = filter_choices(response, "client (recent)")
    assert choices == ["All", "client-acme", "client-globex"]


def test_client_filter_is_bounded_to_recent_rows(staff_client, events, monkeypatch):
    monkeypatch.setattr("audit.filters.RECENT_CLIENT_ROWS", 1)
    response = staff_client.get(reverse(CHANGELIST))
    assert filter_choices(response, "client (recent)") == ["All", "client-acme"]
    # A selected client that is no longer recent stays visible (and still filters).
    response = staff_client.get(reverse(CHANGELIST), {"client_id": "client-globex"})
    assert "client-globex" in filter_choices(response, "client (recent)")
    assert listed(response) == ["req-denied"]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("client-globex", ["req-denied"]),
        ("alice", ["req-ok"]),
        ("ali", ["req-ok"]),  # a prefix of the subject
        ("req-anon", ["req-anon"]),
        ("  req-anon  ", ["req-anon"]),
        ("req-", ["req-ok", "req-denied", "req-anon"]),
        ("jti-1", ["req-ok"]),  # token id
        ("lice", []),  # prefix only: no infix match
        ("ACME", []),  # case-sensitive
        ("Client-globex", []),
    ],
)
def test_search_is_a_prefix_match_on_identifiers(staff_client, events, term, expected):
    response = staff_client.get(reverse(CHANGELIST), {"q": term})
    assert listed(response) == expected


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner")
def test_prefix_search_is_served_by_indexes(events):
    from django.contrib.admin.sites import site

    from audit.admin import AuditEventAdmin

    model_admin = AuditEventAdmin(AuditEvent, site)
    queryset, _ = model_admin.get_search_results(None, AuditEvent.objects.all(), "req-o")
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    for index in ("audit_request_id", "audit_token_id", "audit_client_prefix", "audit_subject"):
        assert index in plan, plan


def test_date_hierarchy_drills_down_without_select_distinct(staff_client, events):
    with CaptureQueriesContext(connection) as ctx:
        response = staff_client.get(reverse(CHANGELIST))
    html = response.content.decode()
    this_year = timezone.now().year
    assert "created_at__year=2023" in html and f"created_at__year={this_year}" in html
    # The only DISTINCT is the client filter's, over a LIMITed subquery of recent rows.
    distinct = [q["sql"].upper() for q in ctx.captured_queries if "DISTINCT" in q["sql"].upper()]
    assert distinct and all("LIMIT" in sql for sql in distinct)
    response = staff_client.get(reverse(CHANGELIST), {"created_at__year": "2023"})
    assert listed(response) == ["req-anon"]
    html = response.content.decode()
    assert "created_at__month=6" in html and "created_at__month=5" not in html
    response = staff_client.get(
        reverse(CHANGELIST), {"created_at__year": "2023", "created_at__month": "6"}
    )
    assert "created_at__day=15" in response.content.decode()
    response = staff_client.get(
        reverse(CHANGELIST),
        {"created_at__year": "2023", "created_at__month": "6", "created_at__day": "15"},
    )
    assert listed(response) == ["req-anon"]


def test_bad_filter_value_does_not_crash(staff_client, events):
    response = staff_client.get(reverse(CHANGELIST), {"created_at__year": "abc"})
    assert response.status_code in (200, 302)


# --- counting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params", [{}, {"outcome": "ok"}, {"q": "alice"}, {"created_at__year": "2023"}]
)
def test_changelist_never_counts_the_whole_table(staff_client, events, params):
    with CaptureQueriesContext(connection) as ctx:
        response = staff_client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    assert unfiltered_counts(ctx.captured_queries) == []


def test_large_sets_use_the_planner_estimate_on_postgresql(staff_client, events, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 1)
    with CaptureQueriesContext(connection) as ctx:
        response = staff_client.get(reverse(CHANGELIST))
    cl = response.context["cl"]
    if connection.vendor == "postgresql":
        assert unfiltered_counts(ctx.captured_queries) == []
        assert cl.paginator.is_estimate
        assert cl.result_count >= 2
        html = response.content.decode()
        assert "is PostgreSQL's estimate" in html
        assert re.search(r'id="audit-result-count">≈&nbsp;\d+ audit events', html)
    else:
        # Elsewhere past the limit the paginator counts exactly, which is acceptable.
        assert not cl.paginator.is_estimate
        assert cl.result_count == 3
    assert set(listed(response)) <= {"req-ok", "req-denied", "req-anon"}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_class.reltuples is PostgreSQL")
def test_unfiltered_estimate_reads_reltuples(staff_client, events, monkeypatch):
    AuditEvent.objects.bulk_create(
        AuditEvent(request_id=f"bulk-{i}", outcome=Outcome.OK, status=200) for i in range(40)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_auditevent")
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 10)
    with CaptureQueriesContext(connection) as ctx:
        response = staff_client.get(reverse(CHANGELIST))
    assert response.context["cl"].result_count == 43
    assert any("reltuples" in q["sql"] for q in ctx.captured_queries)
    assert unfiltered_counts(ctx.captured_queries) == []


def test_small_sets_are_counted_exactly(events):
    paginator = EstimatedCountPaginator(AuditEvent.objects.filter(outcome="ok"), 1)
    assert paginator.count == 1 and not paginator.is_estimate
    paginator = EstimatedCountPaginator(AuditEvent.objects.all(), 1)
    assert paginator.count == 3 and paginator.num_pages == 3


# --- the detail view ---------------------------------------------------------------------------


def test_detail_shows_pretty_redacted_arguments(staff_client):
    pk = record(
        outcome=Outcome.OK,
        status=200,
        request_id="req-detail",
        method="tools/call",
        tool="create_todo",
        arguments={"title": "<b>milk</b>", "password": "hunter2", "nested": {"n": 1}},
    )
    response = staff_client.get(reverse("admin:audit_auditevent_change", args=[pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<pre class="audit-arguments">' in html
    assert "&quot;title&quot;: &quot;&lt;b&gt;milk&lt;/b&gt;&quot;" in html  # escaped
    assert "&quot;password&quot;: &quot;[redacted]&quot;" in html
    assert "\n  &quot;nested&quot;: {\n    &quot;n&quot;: 1\n  }" in html  # indent=2
    assert "hunter2" not in html
    assert 'name="_save"' not in html  # read-only: no save button


def test_raw_jwt_never_reaches_the_admin(staff_client, mint):
    token = mint()
    assert token.startswith("eyJ")
    pk = record(
        outcome=Outcome.TOOL_ERROR,
        status=200,
        request_id="req-jwt",
        method="tools/call",
        tool="create_todo",
        client_id="client-1",
        error_message=f"could not use {token}",
        user_agent=f"curl Bearer {token}",
        arguments={"title": token, "list": [f"x {token} y"], "authorization": token},
    )
    pages = [
        staff_client.get(reverse(CHANGELIST)),
        staff_client.get(reverse(CHANGELIST), {"q": "req-jwt"}),
        staff_client.get(reverse("admin:audit_auditevent_change", args=[pk])),
    ]
    for page in pages:
        assert page.status_code == 200
        assert token not in page.content.decode()
    detail = pages[-1].content.decode()
    assert "[redacted-jwt]" in detail
    for fmt in ("csv", "jsonl"):
        assert token not in body(staff_client.get(reverse(EXPORT), {"format": fmt}))


# --- export ------------------------------------------------------------------------------------


def test_export_csv_of_a_filtered_set(staff_client, events):
    response = staff_client.get(reverse(EXPORT), {"format": "csv", "outcome": "ok"})
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    assert re.fullmatch(
        r'attachment; filename="audit-\d{8}T\d{6}Z\.csv"', response["Content-Disposition"]
    )
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert len(rows) == 1
    row = rows[0]
    assert tuple(row) == EXPORT_FIELDS
    assert row["request_id"] == "req-ok" and row["tenant"] == "acme"
    assert row["client_id"] == "client-acme" and row["subject"] == "alice"
    assert row["status"] == "200" and row["duration_ms"] == "12.5"
    assert row["client_ip"] == "10.0.0.1"
    assert json.loads(row["arguments"]) == {"title": "Buy milk", "tags": ["a", "b"]}
    assert datetime.fromisoformat(row["created_at"]) == events["req-ok"].created_at


def test_export_jsonl_of_a_filtered_set(staff_client, events):
    response = staff_client.get(
        reverse(EXPORT), {"format": "jsonl", "tenant": "globex", "q": "bob"}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    lines = body(response).splitlines()
    assert len(lines) == 1
    item = json.loads(lines[0])
    assert set(item) == set(EXPORT_FIELDS)
    assert item["request_id"] == "req-denied" and item["outcome"] == "denied"
    assert item["error_code"] == "insufficient_scope" and item["status"] == 403
    assert item["arguments"] == {"todo_id": "x"} and item["client_ip"] is None


def test_export_follows_date_hierarchy_and_ordering(staff_client, events):
    response = staff_client.get(reverse(EXPORT), {"format": "jsonl", "created_at__year": "2023"})
    assert [json.loads(line)["request_id"] for line in body(response).splitlines()] == ["req-anon"]
    response = staff_client.get(reverse(EXPORT), {"format": "jsonl", "o": "0", "p": "7"})
    items = [json.loads(line) for line in body(response).splitlines()]
    ids = [i["request_id"] for i in items if i["method"] != "audit/export"]
    assert ids == ["req-anon", "req-denied", "req-ok"]  # ordered by created_at ascending


def test_export_without_filters_streams_every_row(staff_client, events, monkeypatch):
    monkeypatch.setattr("audit.export.ROWS_PER_CHUNK", 2)
    response = staff_client.get(reverse(EXPORT), {"format": "csv"})
    chunks = list(response.streaming_content)
    assert len(chunks) == 3  # header, 2 rows, 1 row
    assert len(list(csv.reader(io.StringIO(b"".join(chunks).decode())))) == 4  # type: ignore[arg-type]


def test_export_rejects_bad_format_and_filters(staff_client, events):
    assert staff_client.get(reverse(EXPORT), {"format": "xml"}).status_code == 400
    assert staff_client.get(reverse(EXPORT), {"nosuchfield": "1"}).status_code == 400


@pytest.mark.django_db(transaction=True)
async def test_export_streams_asynchronously_under_asgi(async_client: AsyncClient):
    from asgiref.sync import sync_to_async

    def setup() -> User:
        AuditEvent.objects.bulk_create(
            AuditEvent(request_id=f"r{i}", outcome=Outcome.OK, status=200) for i in range(5)
        )
        return User.objects.create_superuser("aroot", "a@example.com", "pw")

    user = await sync_to_async(setup)()
    await async_client.aforce_login(user)
    response = await async_client.get(reverse(EXPORT), {"format": "jsonl"})
    assert response.status_code == 200
    assert response.is_async
    data = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert sorted(json.loads(line)["request_id"] for line in data.splitlines()) == [
        f"r{i}" for i in range(5)
    ]
    # The rows were read in the worker thread; close its connection so the test DB can go.
    await sync_to_async(connections.close_all)()


# --- permissions -------------------------------------------------------------------------------


def test_non_staff_is_sent_to_login(client, events):
    user = User.objects.create_user("joe", password="pw")
    client.force_login(user)
    for url in (reverse(CHANGELIST), reverse(EXPORT) + "?format=csv"):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_anonymous_is_sent_to_login(client, events):
    response = client.get(reverse(EXPORT), {"format": "csv"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_needs_the_view_permission(client, events):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(reverse(EXPORT), {"format": "csv"}).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    client.force_login(user)
    assert client.get(reverse(CHANGELIST)).status_code == 200
    response = client.get(reverse(EXPORT), {"format": "csv"})
    assert response.status_code == 200 and "req-ok" in body(response)


def test_add_change_and_delete_are_refused(staff_client, events):
    event = events["req-ok"]
    assert staff_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert staff_client.post(reverse("admin:audit_auditevent_add"), {}).status_code == 403
    change_url = reverse("admin:audit_auditevent_change", args=[event.pk])
    response = staff_client.post(
        change_url,
        {"request_id": "tampered", "outcome": "ok", "status": 200, "created_at_0": "2020-01-01"},
    )
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.request_id == "req-ok"
    delete_url = reverse("admin:audit_auditevent_delete", args=[event.pk])
    assert staff_client.get(delete_url).status_code == 403
    assert staff_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    # Nor through the changelist's bulk actions.
    response = staff_client.post(
        reverse(CHANGELIST),
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert AuditEvent.objects.count() == 3
