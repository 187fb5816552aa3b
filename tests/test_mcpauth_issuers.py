"""Two issuers, each with its own JWKS: keys and tenants belong to the issuer that served them.

Issue 16, item 2. ``idp`` and ``idp_b`` are two loopback identity providers with their own
signing keys (``tests/conftest.py``); ``MCPAUTH_ISSUER`` names both. Every call goes over real
HTTP to the live server.
"""

from __future__ import annotations

import io
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from audit.models import AuditEvent
from mcpauth.admission import ratelimit
from mcpauth.checks import check_configuration
from mcpauth.conf import get_settings, parse_issuers
from mcpauth.exceptions import AccessDenied, InvalidToken
from mcpauth.identity.tokens import Principal, TenantRef, keyset, keysets, verify
from mcpauth.models import ClientBinding, ClientPolicy, Tenant, TenantAlias
from tests.conftest import MCP_ACCEPT, call_tool, client_id_with_room, new_key
from todos.models import Todo


def call(live: Any, token: str, tool: str, args: dict[str, Any] | None = None) -> httpx2.Response:
    headers = {**MCP_ACCEPT, "authorization": f"Bearer {token}"}
    return httpx2.post(live.url, json=call_tool(tool, args), headers=headers, timeout=10)


def result(resp: httpx2.Response) -> Any:
    assert resp.status_code == 200, resp.text
    body = resp.json()["result"]
    assert not body.get("isError"), body
    return body["structuredContent"]


def row_of(resp: httpx2.Response) -> AuditEvent:
    rows = list(AuditEvent.objects.filter(request_id=resp.headers["x-request-id"]))
    assert len(rows) == 1, rows
    return rows[0]


def titles(live: Any, token: str) -> list[str]:
    return sorted(t["title"] for t in result(call(live, token, "list_todos"))["todos"])


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("clients", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- keys belong to their issuer ---------------------------------------------------------------


def test_each_issuers_genuine_tokens_work_and_rows_carry_their_issuer(
    live, idp, idp_b, mint, mint_b
):
    a = call(live, mint(client_id="agent"), "create_todo", {"title": "from A"})
    b = call(live, mint_b(client_id="agent"), "create_todo", {"title": "from B"})
    assert result(a)["todo"]["title"] == "from A" and result(b)["todo"]["title"] == "from B"
    assert (row_of(a).issuer, row_of(a).tenant, row_of(a).outcome) == (idp.issuer, "acme", "ok")
    assert (row_of(b).issuer, row_of(b).tenant, row_of(b).outcome) == (idp_b.issuer, "acme", "ok")
    assert set(keysets()) == {idp.issuer, idp_b.issuer}
    assert verify(mint()).issuer == idp.issuer and verify(mint_b()).issuer == idp_b.issuer
    # every row of these calls names its issuer, and so does the export
    assert not AuditEvent.objects.filter(method="tools/call", issuer="").exists()
    out = io.StringIO()
    call_command("audit_export", "--format", "jsonl", "--issuer", idp_b.issuer, stdout=out)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["issuer"], r["request_id"]) for r in exported] == [
        (idp_b.issuer, b.headers["x-request-id"])
    ]


def test_token_claiming_b_signed_with_as_key_is_refused(live, idp, idp_b, mint, rsa_key):
    result(call(live, mint(), "list_todos"))  # A's keys are loaded: A's key is at hand
    forged = mint(iss=idp_b.issuer, key=rsa_key)  # B's iss, A's key (A's kid)
    resp = call(live, forged, "list_todos")
    assert resp.status_code == 401, resp.text
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    row = row_of(resp)
    assert (row.outcome, row.status, row.error_code) == ("unauthenticated", 401, "unknown_key")
    assert (row.tenant, row.issuer, row.client_id) == ("", "", "")  # nothing unverified kept
    assert not Tenant.objects.filter(issuer=idp_b.issuer).exists()


def test_b_key_with_as_kid_is_still_bs_key(live, idp, idp_b, mint, rsa_key):
    """When B's JWKS happens to use the kid of A's key, A's key is still not B's."""
    idp_b.keys = [new_key(rsa_key.kid)]
    resp = call(live, mint(iss=idp_b.issuer, key=rsa_key), "list_todos")
    assert resp.status_code == 401
    assert row_of(resp).error_code == "bad_signature"
    # and A's genuine token with the same kid works
    result(call(live, mint(), "list_todos"))


def test_an_issuer_that_is_not_configured_is_refused(live, idp, mint):
    resp = call(live, mint(iss="https://elsewhere.example"), "list_todos")
    assert resp.status_code == 401 and row_of(resp).error_code == "wrong_issuer"


# --- tenants belong to their issuer ------------------------------------------------------------


def test_same_claim_from_two_issuers_is_two_tenants(live, idp, idp_b, mint, mint_b):
    a_todo = result(call(live, mint(), "create_todo", {"title": "A's secret"}))["todo"]
    b_todo = result(call(live, mint_b(), "create_todo", {"title": "B's secret"}))["todo"]
    tenants = set(Tenant.objects.values_list("issuer", "external_id"))
    assert tenants == {(idp.issuer, "acme"), (idp_b.issuer, "acme")}
    assert titles(live, mint()) == ["A's secret"]
    assert titles(live, mint_b()) == ["B's secret"]
    # neither can reach the other's todo by id
    for token, other in ((mint_b(), a_todo), (mint(), b_todo)):
        resp = call(live, token, "get_todo", {"todo_id": other["id"]})
        assert resp.status_code == 200 and resp.json()["result"]["isError"]
    owners = dict(Todo.all_tenants.values_list("title", "tenant__issuer"))
    assert owners == {"A's secret": idp.issuer, "B's secret": idp_b.issuer}


def test_an_alias_joins_them(live, idp, idp_b, mint, mint_b):
    result(call(live, mint(), "create_todo", {"title": "shared"}))
    out = run("alias", "acme", "acme", "--issuer", idp_b.issuer, "--tenant-issuer", idp.issuer)
    assert "Aliased acme" in out
    assert titles(live, mint_b()) == ["shared"]  # B's acme is A's acme now
    resp = call(live, mint_b(), "create_todo", {"title": "from B"})
    result(resp)
    assert (row_of(resp).issuer, row_of(resp).tenant) == (idp_b.issuer, "acme")
    assert titles(live, mint()) == ["from B", "shared"]
    assert Tenant.objects.count() == 1  # no tenant of B's was made
    config = AuditEvent.objects.get(method="config/tenant_alias.create")
    assert (config.issuer, config.tenant, config.actor.startswith("cli:")) == (
        idp_b.issuer,
        "acme",
        True,
    )
    # without the alias, B's acme is a tenant of its own again (and empty)
    run("unalias", "acme", "--issuer", idp_b.issuer, "--yes")
    assert titles(live, mint_b()) == []
    assert AuditEvent.objects.filter(method="config/tenant_alias.delete").count() == 1


def test_an_alias_cannot_shadow_a_tenant_of_its_issuer(db, idp, idp_b):
    a = Tenant.objects.create(issuer=idp.issuer, external_id="acme")
    Tenant.objects.create(issuer=idp_b.issuer, external_id="acme")
    alias = TenantAlias(issuer=idp_b.issuer, external_id="acme", tenant=a)
    with pytest.raises(ValidationError, match="already has its own tenant"):
        alias.full_clean()
    with pytest.raises(CommandError, match="already has its own tenant"):
        run("alias", "acme", "acme", "--issuer", idp_b.issuer, "--tenant-issuer", idp.issuer)
    with pytest.raises(ValidationError, match="not a configured issuer"):
        TenantAlias(issuer="https://nobody.example", external_id="x", tenant=a).full_clean()
    # and a tenant cannot be made where an alias already leads elsewhere
    TenantAlias.objects.create(issuer=idp_b.issuer, external_id="globex", tenant=a)
    with pytest.raises(ValidationError, match="alias"):
        Tenant(issuer=idp_b.issuer, external_id="globex").full_clean()
    assert not AuditEvent.objects.exists()


def test_alias_in_the_admin_is_validated_and_audited(db, client, idp, idp_b):
    client.force_login(User.objects.create_superuser("alice", "alice@example.com", "pw"))
    a = Tenant.objects.create(issuer=idp.issuer, external_id="acme")
    Tenant.objects.create(issuer=idp_b.issuer, external_id="taken")
    url = reverse("admin:mcpauth_tenantalias_add")
    form = {"issuer": idp_b.issuer, "external_id": "taken", "tenant": a.pk, "note": ""}
    page = client.post(url, form)
    assert page.status_code == 200 and "already has its own tenant" in page.content.decode()
    assert client.post(url, {**form, "external_id": "acme-b"}).status_code == 302
    alias = TenantAlias.objects.get()
    assert (alias.issuer, alias.external_id, alias.tenant) == (idp_b.issuer, "acme-b", a)
    row = AuditEvent.objects.get(method="config/tenant_alias.create")
    assert (row.actor, row.issuer, row.tenant) == ("alice", idp_b.issuer, "acme")
    # the tenant's page lists the alias and counts rows written under the alias's issuer
    page = client.get(reverse("admin:mcpauth_tenant_change", args=[a.pk])).content.decode()
    assert "1 alias(es)" in page


def test_suspension_refusal_row_carries_the_issuer(live, idp, idp_b, mint, mint_b):
    Tenant.objects.create(issuer=idp_b.issuer, external_id="acme", suspended=True)
    refused = call(live, mint_b(), "list_todos")
    assert refused.status_code == 403
    row = row_of(refused)
    assert (row.error_code, row.tenant, row.issuer) == ("tenant_suspended", "acme", idp_b.issuer)
    result(call(live, mint(), "list_todos"))  # A's acme is not suspended


# --- clients belong to their issuer -------------------------------------------------------------


def test_client_binding_is_per_issuer(live, idp, idp_b, mint, mint_b):
    run("bind", "bot", "acme", "--issuer", idp.issuer, "--create-tenant")
    result(call(live, mint(client_id="bot", org_id=None), "list_todos"))
    resp = call(live, mint_b(client_id="bot", org_id=None), "list_todos")
    assert resp.status_code == 403 and row_of(resp).error_code == "no_tenant"
    assert row_of(resp).issuer == idp_b.issuer
    # an explicit cross-issuer binding is the operator's choice
    run("bind", "bot", "acme", "--issuer", idp_b.issuer, "--tenant-issuer", idp.issuer)
    resp = call(live, mint_b(client_id="bot", org_id=None), "list_todos")
    result(resp)
    assert (row_of(resp).issuer, row_of(resp).tenant) == (idp_b.issuer, "acme")
    assert ClientBinding.objects.count() == 2 and Tenant.objects.count() == 1


def test_rate_limit_counters_are_per_issuer(live, idp, idp_b, mint, mint_b, settings):
    settings.MCPAUTH_RATE_LIMIT = "3/m"
    client_id = client_id_with_room("same-id")
    for _ in range(3):
        result(call(live, mint(client_id=client_id), "list_todos"))
    assert call(live, mint(client_id=client_id), "list_todos").status_code == 429
    resp = call(live, mint_b(client_id=client_id), "list_todos")  # B's client of that id
    result(resp)
    assert resp.headers["x-ratelimit-remaining"] == "2"


def test_client_policy_is_per_issuer(db, idp, idp_b):
    ClientPolicy.objects.create(issuer=idp.issuer, client_id="svc", mode="blocked")
    ClientPolicy.objects.create(issuer=idp_b.issuer, client_id="svc", mode="unlimited")

    def principal(issuer: str) -> Principal:
        return Principal(
            client_id="svc",
            subject="s",
            tenant=TenantRef(1, "acme", issuer),
            scopes=frozenset(),
            permissions=frozenset(),
            token_id="t",
            issuer=issuer,
        )

    with pytest.raises(AccessDenied):
        ratelimit.rate_for(principal(idp.issuer))
    assert ratelimit.rate_for(principal(idp_b.issuer)) == (None, "unlimited")
    with pytest.raises(CommandError, match="pass --issuer"):
        run("policy", "svc", "--rate", "5/m")  # two issuers: which one is meant must be said
    run("policy", "svc", "--rate", "5/m", "--issuer", idp.issuer)
    assert ratelimit.rate_for(principal(idp.issuer)) == ("5/m", "client")
    row = AuditEvent.objects.get(method="config/client_policy.update")
    assert (row.client_id, row.issuer) == ("svc", idp.issuer)


# --- configuration -------------------------------------------------------------------------------


def test_issuers_setting_forms():
    pairs = (("https://a.example", "https://a.example/keys"), ("https://b.example/", ""))
    assert parse_issuers("https://a.example=https://a.example/keys, https://b.example/") == (
        pairs,
        (),
    )
    assert parse_issuers(dict(pairs)) == (pairs, ())
    assert parse_issuers([pairs[0], "https://b.example/"]) == (pairs, ())
    assert parse_issuers([{"issuer": "https://a.example", "jwks_url": "https://a.example/keys"}])[
        0
    ] == (pairs[0],)
    entries, problems = parse_issuers("ftp://x https://a.example?x=1 https://c=nope 7")
    assert entries == ()
    assert len(problems) == 4
    _, problems = parse_issuers({"https://a.example": "https://1/k", "https://a.example/": None})
    assert problems == ()
    _, problems = parse_issuers([("https://a", "https://1/k"), ("https://a", "https://2/k")])
    assert problems and "twice" in problems[0]


def test_each_issuer_gets_its_own_explicit_jwks_url(db, idp, idp_b, mint, mint_b, settings):
    idp.discovery = idp_b.discovery = False  # only the configured JWKS URLs can work
    settings.MCPAUTH_ISSUER = ""
    settings.MCPAUTH_ISSUERS = (
        f"{idp.issuer}={idp.url}/jwks.json {idp_b.issuer}={idp_b.url}/jwks.json"
    )
    assert not [m for m in check_configuration() if m.is_serious()]
    assert verify(mint()).issuer == idp.issuer
    assert verify(mint_b()).issuer == idp_b.issuer
    # MCPAUTH_ISSUER and MCPAUTH_ISSUERS add up; an issuer left out of both is not accepted
    settings.MCPAUTH_ISSUER = idp.issuer
    settings.MCPAUTH_ISSUERS = {idp_b.issuer: f"{idp_b.url}/jwks.json"}
    idp.discovery = True
    assert [c.issuer for c in get_settings().issuer_configs] == [idp.issuer, idp_b.issuer]
    assert verify(mint_b()).issuer == idp_b.issuer and verify(mint()).issuer == idp.issuer
    settings.MCPAUTH_ISSUERS = ""
    settings.MCPAUTH_ISSUER = idp.issuer
    with pytest.raises(InvalidToken, match="issuer not accepted"):
        verify(mint_b())


def test_single_issuer_jwks_url_still_works(db, idp, mint, settings):
    idp.discovery = False
    settings.MCPAUTH_JWKS_URL = f"{idp.url}/jwks.json"
    assert verify(mint()).issuer == idp.issuer
    assert not [m for m in check_configuration() if m.is_serious()]


def test_issuer_checks(idp, idp_b, settings):
    settings.MCPAUTH_JWKS_URL = f"{idp.url}/jwks.json"  # one JWKS for two issuers
    errors = {m.id: m for m in check_configuration()}
    assert "mcpauth.E010" in errors and errors["mcpauth.E010"].hint
    settings.MCPAUTH_JWKS_URL = ""
    settings.MCPAUTH_ISSUERS = "not-a-url=https://x.example/keys"
    errors = {m.id: m for m in check_configuration()}
    assert "mcpauth.E011" in errors and "not-a-url" in errors["mcpauth.E011"].msg
    settings.MCPAUTH_ISSUERS = ""
    assert not [m for m in check_configuration() if m.is_serious()]


def test_adopt_assigns_rows_without_an_issuer(db, idp, idp_b):
    orphan = Tenant.objects.create(issuer="", external_id="legacy")
    ClientBinding.objects.create(issuer="", client_id="bot", tenant=orphan)
    Tenant.objects.create(issuer="", external_id="clash")
    Tenant.objects.create(issuer=idp.issuer, external_id="clash")
    with pytest.raises(CommandError, match="clash"):
        run("adopt", idp.issuer, "--yes")
    assert Tenant.objects.filter(issuer="").count() == 2  # nothing changed
    Tenant.objects.filter(issuer="", external_id="clash").delete()
    assert "Assigned 2 row(s)" in run("adopt", idp.issuer, "--yes")
    assert not Tenant.objects.filter(issuer="").exists()
    assert ClientBinding.objects.get().issuer == idp.issuer
    methods = sorted(AuditEvent.objects.values_list("method", "issuer"))
    assert methods == [
        ("config/client_binding.adopt", idp.issuer),
        ("config/tenant.adopt", idp.issuer),
    ]


# --- readiness ------------------------------------------------------------------------------------


def test_readiness_reports_each_issuers_keys(live, idp, idp_b, settings):
    body = httpx2.get(f"{live.base}/health/ready", timeout=10).json()
    assert body["status"] == "ok"
    assert set(body["issuers"]) == {idp.issuer, idp_b.issuer}
    assert all(s["ok"] and s["keys"] == 1 for s in body["issuers"].values())
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 30  # fresh key sets: nothing cached
    idp_b.down = True
    resp = httpx2.get(f"{live.base}/health/ready", timeout=10)
    assert resp.status_code == 200  # A's callers are still served
    body = resp.json()
    assert body["status"] == "degraded"
    a, b = body["issuers"][idp.issuer], body["issuers"][idp_b.issuer]
    assert a["ok"] and not b["ok"]
    assert (b["keys"], b["error"], b["failures"]) == (0, "JWKSFetchError", 1)
    assert 0 < b["retry_in_s"] <= 1.0  # the first retry comes after about a second
    assert "jwks.json" not in resp.text and "503" not in resp.text  # no URL, no error text
    idp.down = True
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 31
    resp = httpx2.get(f"{live.base}/health/ready", timeout=10)
    assert resp.status_code == 503 and resp.json()["status"] == "unavailable"


# --- JWKS recovery (item 5) ----------------------------------------------------------------------


def _jwks_attempts_bound(seconds: float) -> int:
    """Fetch attempts backing off 1 s, 2 s, 4 s … can make in ``seconds``: 1 + log2(1 + s)."""
    return 1 + int(math.log2(1 + seconds))


def test_service_resumes_soon_after_the_jwks_answers_again(live, idp, mint, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 60  # fresh, cold key set (the old flat wait)
    idp.down = True
    token = mint()
    started = time.monotonic()
    refused = 0
    while time.monotonic() - started < 5.0 and refused < 200:  # a 5 s outage, bounded
        resp = call(live, token, "list_todos")
        assert resp.status_code == 503, resp.text
        assert int(resp.headers["retry-after"]) <= 8
        refused += 1
        time.sleep(0.05)
    outage = time.monotonic() - started
    attempts = keyset(idp.issuer).fetch_count
    assert 2 <= attempts <= _jwks_attempts_bound(outage)  # backed off, not once per call
    assert refused > attempts

    idp.down = False
    answered = time.monotonic()
    for _ in range(300):  # bounded: 15 s at most
        resp = call(live, token, "list_todos")
        if resp.status_code == 200:
            break
        assert resp.status_code == 503
        time.sleep(0.05)
    resumed = time.monotonic() - answered
    assert resp.status_code == 200
    print(f"outage {outage:.1f} s: {attempts} attempts; resumed {resumed:.2f} s after")
    assert resumed <= 10.0, f"service resumed {resumed:.1f} s after the JWKS answered"
    assert keyset(idp.issuer).failures == 0  # the success reset the backoff


def test_a_burst_during_the_outage_fetches_a_few_times(live, idp, mint, settings):
    settings.MCPAUTH_JWKS_REFETCH_INTERVAL = 60  # fresh, cold key set
    idp.down = True
    idp.delay = 0.3  # a slow, failing IdP: callers arrive while a fetch is in flight
    tokens = [mint(client_id=f"burst-{i}") for i in range(48)]
    before = idp.attempts
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda t: call(live, t, "list_todos").status_code, tokens))
    elapsed = time.monotonic() - started
    print(f"burst: {keyset(idp.issuer).fetch_count} fetches, {idp.attempts - before} requests")
    assert statuses == [503] * 48
    bound = _jwks_attempts_bound(elapsed)
    assert 1 <= keyset(idp.issuer).fetch_count <= bound
    # each attempt's discovery tries at most its two metadata URLs
    assert 1 <= idp.attempts - before <= 2 * bound
    assert AuditEvent.objects.filter(error_code="jwks_down").count() == 48
    idp.delay = 0.0


# --- the upgrade ----------------------------------------------------------------------------------


def test_migration_assigns_existing_rows_to_the_issuer_configured_then(transactional_db, idp):
    """Tenants, bindings and policies made before issuers existed become the configured
    issuer's (``mcpauth`` 0004); the constraints of 0005 then hold."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = (
        [("mcpauth", "0002_seed_scope_mappings")],
        [("mcpauth", "0005_issuer_namespaces")],
    )
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    acme = old.get_model("mcpauth", "Tenant").objects.create(external_id="acme", name="Acme")
    old.get_model("mcpauth", "ClientBinding").objects.create(client_id="bot", tenant_id=acme.pk)
    old.get_model("mcpauth", "ClientPolicy").objects.create(client_id="bot", mode="blocked")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    # and everything else back as it was (apps whose migrations depend on later ones)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert list(Tenant.objects.values_list("issuer", "external_id", "name")) == [
        (idp.issuer, "acme", "Acme")
    ]
    assert ClientBinding.objects.get().issuer == idp.issuer
    assert ClientPolicy.objects.get().issuer == idp.issuer
    # B's acme can now be a tenant of its own; (issuer, external_id) stays unique
    Tenant.objects.create(issuer="https://b.example", external_id="acme")
    with pytest.raises(ValidationError):
        Tenant(issuer=idp.issuer, external_id="acme").full_clean()
