"""Property tests for the service layer: tenant isolation and pagination under random operations.

Hypothesis drives random sequences of create/update/delete/get/list calls by four principals
(two subjects in each of two tenants) with random titles (unicode, whitespace-only, empty, at and
over the 200-character limit) and compares every answer with a plain-Python model of the state.

The principals are made once per test (``make_principal`` is function-scoped) and reused by every
example; each example starts by deleting every ``Todo`` row, because all examples share the
test's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpauth.identity.tokens import Principal
from todos import services
from todos.models import DESCRIPTION_MAX, TITLE_MAX, Todo

pytestmark = pytest.mark.django_db

TENANTS = ("prop-acme", "prop-globex")
#: (tenant index, subject): two people in each tenant, so tenants are shared within, not across.
PEOPLE = ((0, "alice"), (0, "bob"), (1, "carol"), (1, "dave"))

PROPERTY_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    database=None,  # nothing written to .hypothesis/ in the shared tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# NUL is included: PostgreSQL text cannot hold it, so the service must refuse it cleanly.
_chars = st.characters(exclude_categories=("Cs",))
plain_titles = st.text(_chars, min_size=1, max_size=30).filter(lambda s: s.strip() != "")
titles = st.one_of(
    plain_titles,
    st.text(_chars, max_size=24),
    st.text(_chars, min_size=TITLE_MAX - 5, max_size=TITLE_MAX + 5),
    st.sampled_from(
        [
            "",
            " ",
            "\t\n ",
            "\u3000",  # ideographic space: whitespace to str.strip()
            "  Buy milk  ",
            "x" * TITLE_MAX,
            "x" * (TITLE_MAX + 1),
            " " + "x" * TITLE_MAX + " ",  # 200 after trimming
            "\U0001f984" * TITLE_MAX,  # 200 astral characters (800 UTF-8 bytes)
            "\U0001f984" * (TITLE_MAX + 1),
            "é" * TITLE_MAX,
            "'; DROP TABLE todos_todo; --",
            "<script>alert(1)</script>",
        ]
    ),
)
descriptions = st.one_of(
    st.none(),
    st.text(_chars, max_size=40),
    st.sampled_from(["", "d" * DESCRIPTION_MAX, "d" * (DESCRIPTION_MAX + 1)]),
)
#: A target id: an index into every id created so far in the example (either tenant, deleted or
#: not), a random UUID, or garbage.
known = st.integers(min_value=0, max_value=10_000).map(lambda i: ("known", i))
raw = st.one_of(
    st.uuids().map(lambda u: ("raw", str(u))),
    st.sampled_from(["", "not-a-uuid", "1 OR 1=1", "0" * 32]).map(lambda s: ("raw", s)),
)
targets = st.integers(min_value=0, max_value=9).flatmap(lambda n: known if n < 8 else raw)
person = st.integers(min_value=0, max_value=len(PEOPLE) - 1)
operations = st.one_of(
    st.tuples(st.just("create"), person, plain_titles, st.none()),
    st.tuples(st.just("create"), person, titles, descriptions),
    st.tuples(
        st.just("update"),
        person,
        targets,
        st.one_of(st.none(), titles),
        descriptions,
        st.one_of(st.none(), st.booleans()),
    ),
    st.tuples(st.just("delete"), person, targets),
    st.tuples(st.just("get"), person, targets),
    st.tuples(
        st.just("list"),
        person,
        st.integers(min_value=1, max_value=10),
        st.sampled_from([None, True, False]),
    ),
)


@dataclass
class Row:
    tenant: int
    title: str
    description: str
    completed: bool
    created_by: str
    created_at: datetime

    def expect(self, todo: dict[str, Any]) -> None:
        assert todo["title"] == self.title
        assert todo["description"] == (self.description or None)
        assert todo["completed"] is self.completed
        assert todo["created_by"] == self.created_by
        assert datetime.fromisoformat(todo["created_at"]) == self.created_at


@dataclass
class Model:
    """What the database should hold: every live row by id, and every id ever created."""

    rows: dict[str, Row] = field(default_factory=dict)
    ever: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def bump(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def resolve(self, target: tuple[str, Any]) -> str:
        kind, value = target
        if kind == "known" and self.ever:
            return self.ever[value % len(self.ever)]
        return str(value) if kind == "raw" else str(uuid.uuid4())

    def visible(self, todo_id: str, tenant: int) -> Row | None:
        row = self.rows.get(todo_id)
        return row if row is not None and row.tenant == tenant else None

    def expected_listing(self, tenant: int, completed: bool | None) -> list[str]:
        own = [
            (row.created_at, uuid.UUID(todo_id), todo_id)
            for todo_id, row in self.rows.items()
            if row.tenant == tenant and (completed is None or row.completed is completed)
        ]
        return [todo_id for *_, todo_id in sorted(own, reverse=True)]


def title_ok(value: str) -> str | None:
    """The stored title for ``value``, or ``None`` when the service must refuse it."""
    trimmed = value.strip()
    return trimmed if 1 <= len(trimmed) <= TITLE_MAX and "\x00" not in trimmed else None


def description_ok(value: str | None) -> bool:
    return value is None or (len(value) <= DESCRIPTION_MAX and "\x00" not in value)


def walk_pages(
    principal: Principal,
    size: int,
    completed: bool | None = None,
    between: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Every page of a listing; checks each page's size and cursor. Bounded."""
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page = services.list_todos(principal, completed=completed, limit=size, cursor=cursor)
        assert len(page["todos"]) <= size
        if page["next_cursor"] is not None:
            assert len(page["todos"]) == size  # only a full page can have a next one
        seen.extend(page["todos"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        assert page["todos"], "a non-final page is empty"
        if between is not None:
            between()
    raise AssertionError("pagination did not terminate")


def check_database(model: Model) -> None:
    db = {
        str(pk): tenant for pk, tenant in Todo.all_tenants.values_list("pk", "tenant__external_id")
    }
    assert db == {todo_id: TENANTS[row.tenant] for todo_id, row in model.rows.items()}


def run_operation(op: tuple[Any, ...], principals: list[Principal], model: Model) -> None:
    kind, who = op[0], op[1]
    principal = principals[who]
    tenant, subject = PEOPLE[who]

    if kind == "create":
        _, _, title, description = op
        stored = title_ok(title)
        if stored is None or not description_ok(description):
            with pytest.raises(services.InvalidInput):
                services.create_todo(principal, title=title, description=description)
            model.bump("create refused")
            return
        todo = services.create_todo(principal, title=title, description=description)
        row = Row(
            tenant,
            stored,
            description or "",
            False,
            subject,
            datetime.fromisoformat(todo["created_at"]),
        )
        row.expect(todo)
        assert todo["id"] not in model.ever
        model.rows[todo["id"]] = row
        model.ever.append(todo["id"])
        model.bump("create")
        return

    if kind == "list":
        _, _, size, completed = op
        listed = walk_pages(principal, size, completed)
        ids = [t["id"] for t in listed]
        assert ids == model.expected_listing(tenant, completed)
        for todo in listed:
            model.rows[todo["id"]].expect(todo)
        model.bump("list")
        return

    todo_id = model.resolve(op[2])
    row = model.visible(todo_id, tenant)
    foreign = todo_id in model.rows and row is None
    if row is None:
        before = Todo.all_tenants.filter(pk=todo_id).values().first() if foreign else None
        call: dict[str, Callable[[], Any]] = {
            "get": lambda: services.get_todo(principal, todo_id),
            "delete": lambda: services.delete_todo(principal, todo_id),
            "update": lambda: services.update_todo(
                principal, todo_id, title=op[3], description=op[4], completed=op[5]
            ),
        }
        with pytest.raises(services.NotFound) as exc:
            call[kind]()
        assert "not found" in str(exc.value)
        if foreign:  # another tenant's row: refused exactly like a missing one, and untouched
            assert Todo.all_tenants.filter(pk=todo_id).values().first() == before
            model.bump(f"{kind} foreign")
        else:
            model.bump(f"{kind} missing")
        return

    if kind == "get":
        row.expect(services.get_todo(principal, todo_id))
        model.bump("get")
    elif kind == "delete":
        assert services.delete_todo(principal, todo_id) == todo_id
        del model.rows[todo_id]
        model.bump("delete")
        assert not Todo.all_tenants.filter(pk=todo_id).exists()
        return
    else:
        _, _, _, title, description, completed = op
        stored = None if title is None else title_ok(title)
        if (title is not None and stored is None) or not description_ok(description):
            with pytest.raises(services.InvalidInput):
                services.update_todo(
                    principal, todo_id, title=title, description=description, completed=completed
                )
            model.bump("update refused")
        else:
            todo = services.update_todo(
                principal, todo_id, title=title, description=description, completed=completed
            )
            if stored is not None:
                row.title = stored
            if description is not None:
                row.description = description
            if completed is not None:
                row.completed = completed
            model.bump("update")
            row.expect(todo)
    row.expect(services.get_todo(principal, todo_id))


def _principals(make_principal: Callable[..., Principal]) -> list[Principal]:
    return [make_principal(TENANTS[t], subject=s) for t, s in PEOPLE]


def test_random_operations_keep_tenants_apart_and_match_the_model(make_principal):
    principals = _principals(make_principal)
    totals: dict[str, int] = {}

    @PROPERTY_SETTINGS
    @given(ops=st.lists(operations, min_size=5, max_size=40))
    def run(ops: list[tuple[Any, ...]]) -> None:
        Todo.all_tenants.all().delete()
        model = Model()
        for op in ops:
            run_operation(op, principals, model)
        # the end state, seen through every principal and straight from the table
        for who, principal in enumerate(principals):
            listed = [t["id"] for t in walk_pages(principal, 7)]
            assert listed == model.expected_listing(PEOPLE[who][0], None)
        check_database(model)
        for key, value in model.counts.items():
            totals[key] = totals.get(key, 0) + value

    run()
    print(f"\nservice operations checked against the model: {sorted(totals.items())}")
    # the strategies did reach the interesting branches
    assert totals.get("create", 0) > 0 and totals.get("list", 0) > 0
    assert sum(v for k, v in totals.items() if k.endswith("foreign")) > 0


def test_pagination_under_concurrent_writes_returns_exactly_the_stable_rows(make_principal):
    """Walking pages while rows are created (both tenants) and the other tenant deletes: rows
    that existed before the walk and survive it appear exactly once; newer rows never appear;
    nothing of the other tenant appears."""
    principals = _principals(make_principal)
    me, neighbour = principals[0], principals[2]

    @PROPERTY_SETTINGS
    @given(
        mine=st.integers(min_value=0, max_value=25),
        theirs=st.integers(min_value=0, max_value=10),
        size=st.integers(min_value=1, max_value=10),
        completed=st.sampled_from([None, True, False]),
        done_every=st.integers(min_value=1, max_value=4),
        interleave=st.lists(
            st.sampled_from(["create mine", "create theirs", "delete theirs", "noop"]),
            max_size=30,
        ),
    )
    def run(
        mine: int,
        theirs: int,
        size: int,
        completed: bool | None,
        done_every: int,
        interleave: list[str],
    ) -> None:
        Todo.all_tenants.all().delete()
        stable: list[str] = []
        for i in range(mine):
            todo = services.create_todo(me, title=f"mine {i}")
            if i % done_every == 0:
                services.update_todo(me, todo["id"], completed=True)
            if completed is None or (i % done_every == 0) is completed:
                stable.append(todo["id"])
        foreign = [
            services.create_todo(neighbour, title=f"theirs {i}")["id"] for i in range(theirs)
        ]
        steps = iter(interleave)
        late: list[str] = []

        def between() -> None:
            step = next(steps, "noop")
            if step == "create mine":
                late.append(services.create_todo(me, title="late")["id"])
            elif step == "create theirs":
                foreign.append(services.create_todo(neighbour, title="late theirs")["id"])
            elif step == "delete theirs" and foreign:
                services.delete_todo(neighbour, foreign.pop())

        seen = [t["id"] for t in walk_pages(me, size, completed, between)]
        assert len(seen) == len(set(seen))
        assert seen == stable[::-1]  # newest first, each once, none late, none foreign
        assert not set(seen) & set(late)

    run()


def test_nul_in_title_or_description_is_refused_never_a_crash(make_principal):
    """NUL is valid JSON (``"\\u0000"``), so any client can send it; PostgreSQL text cannot hold
    it. The service refuses it with InvalidInput (a tool error with a reason), on every DB."""
    p = make_principal("prop-acme")
    for fields in ({"title": "a\x00b"}, {"title": "ok", "description": "d\x00"}):
        with pytest.raises(services.InvalidInput, match="NUL"):
            services.create_todo(p, **fields)
    todo_id = services.create_todo(p, title="fine")["id"]
    with pytest.raises(services.InvalidInput, match="NUL"):
        services.update_todo(p, todo_id, description="x\x00")
    assert list(Todo.all_tenants.values_list("title", "description")) == [("fine", "")]


def test_a_lone_surrogate_is_refused_never_a_crash(make_principal):
    """A lone surrogate is valid JSON (``"\\ud800"``) but no database stores it as UTF-8: the
    service refuses it with InvalidInput (a tool error with a reason), on every DB."""
    p = make_principal("prop-acme")
    for fields in ({"title": "a\ud800b"}, {"title": "ok", "description": "\udfff"}):
        with pytest.raises(services.InvalidInput, match="lone surrogate"):
            services.create_todo(p, **fields)
    todo_id = services.create_todo(p, title="fine")["id"]
    with pytest.raises(services.InvalidInput, match="lone surrogate"):
        services.update_todo(p, todo_id, title="\udc00x")
    assert list(Todo.all_tenants.values_list("title", "description")) == [("fine", "")]
