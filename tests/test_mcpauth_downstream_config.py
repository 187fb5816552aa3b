"""Declaring downstreams and keeping their secrets: settings and system checks, encryption at
rest with rotating keys, the write-only command and admin, and the database's own refusal to
let a tool body read the secrets table (PostgreSQL)."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import ProgrammingError, connection, transaction
from django.urls import reverse

from audit.models import AuditEvent
from mcpauth import checks as mcpauth_checks
from mcpauth import rls
from mcpauth.downstream import crypto, records
from mcpauth.downstream.checks import check_downstreams
from mcpauth.downstream.conf import get_settings, parse
from mcpauth.downstream.models import DownstreamSecret
from mcpauth.models import Tenant
from mcpauth.runtime.context import CallContext
from mcpauth.tenant_scope import confined
from tests.downstream_service import KEY

OLD_KEY = "an-older-encryption-key-0123456789-xyz"


def ids(messages: list[Any]) -> list[str]:
    return sorted(m.id for m in messages)


# --- declarations and checks ------------------------------------------------------------------


def test_entries_are_validated_with_defaults_per_kind() -> None:
    crm = parse("crm", {"url": "https://crm.example.com/api", "auth": "api_key"})
    assert (crm.header, crm.scheme, crm.per_tenant, crm.stores_secret) == (
        "Authorization",
        "Bearer",
        False,
        True,
    )
    assert (crm.origin, crm.path_prefix, crm.host) == (
        ("https", "crm.example.com", 443),
        "/api/",
        "crm.example.com",
    )
    keyed = parse("k", {"url": "https://k.example", "auth": "api_key", "header": "X-API-Key"})
    assert keyed.scheme == ""
    cc = parse(
        "billing",
        {
            "url": "https://billing.example",
            "auth": "client_credentials",
            "issuer": "https://auth.example/",
            "client_id": "me",
            "client_secret": "s3cret-in-settings",
            "scopes": "a b",
        },
    )
    assert (cc.audience, cc.scopes, cc.issuer, cc.stores_secret) == (
        "https://billing.example",
        ("a", "b"),
        "https://auth.example",
        False,
    )
    assert "s3cret" not in repr(cc)
    te = parse("ledger", {"url": "https://l.example", "auth": "token_exchange", "client_id": "me"})
    assert (te.issuer, te.stores_secret, te.audience_param) == ("", True, "resource")
    fwd = parse("mesh", {"url": "http://127.0.0.1:9/mesh", "auth": "forward", "audience": "urn:x"})
    assert fwd.audience == "urn:x"


@pytest.mark.parametrize(
    ("name", "entry", "problem"),
    [
        ("Bad Name", {"url": "https://x", "auth": "none"}, "the name must be"),
        ("x", {"url": "https://x", "auth": "magic"}, "'auth' must be one of"),
        ("x", {"auth": "none"}, "'url' is required"),
        ("x", {"url": "ftp://x", "auth": "none"}, "absolute http(s) URL"),
        ("x", {"url": "https://u:p@x", "auth": "none"}, "must not contain a query"),
        ("x", {"url": "https://x", "auth": "api_key", "issuer": "y"}, "unknown key(s)"),
        ("x", {"url": "https://x", "auth": "forward", "client_id": "c"}, "unknown key(s)"),
        ("x", {"url": "https://x", "auth": "none", "timeout": 0}, "'timeout' must be"),
        ("x", {"url": "https://x", "auth": "client_credentials", "client_id": "c"}, "needs"),
        ("x", {"url": "https://x", "auth": "token_exchange"}, "'client_id' is required"),
        (
            "x",
            {"url": "https://x", "auth": "token_exchange", "client_id": "c", "scopes": [1]},
            "'scopes' must be",
        ),
        (
            "x",
            {"url": "https://x", "auth": "api_key", "per_tenant": "yes"},
            "'per_tenant' must be",
        ),
        ("x", {"url": "https://x", "auth": "api_key", "header": "X Key"}, "'header' must be"),
    ],
)
def test_a_bad_entry_is_left_out_and_reported(
    settings: Any, name: str, entry: dict[str, Any], problem: str
) -> None:
    settings.MCPAUTH_DOWNSTREAMS = {name: entry, "ok": {"url": "https://ok", "auth": "none"}}
    conf = get_settings()
    assert list(conf.downstreams) == ["ok"]
    [message] = [m for m in check_downstreams() if m.id == "mcpauth.E050"]
    assert problem in message.msg and repr(name) in message.msg
    with pytest.raises(ImproperlyConfigured, match=r"mcpauth\.E050"):
        mcpauth_checks.assert_startup_ready()


def test_keys_are_required_for_stored_secrets_and_must_be_long_enough(settings: Any) -> None:
    settings.MCPAUTH_DOWNSTREAMS = {
        "crm": {"url": "https://crm.example", "auth": "api_key"},
        "lan": {"url": "http://10.0.0.5/api", "auth": "forward"},
        "local": {"url": "http://127.0.0.1:9/api", "auth": "forward"},
        "public": {"url": "http://example.com", "auth": "none"},
        "idp": {
            "url": "https://idp.example",
            "auth": "client_credentials",
            "token_url": "http://idp.example/token",
            "client_id": "me",
            "client_secret": "in-settings",
        },
    }
    warnings = ["mcpauth.W053", "mcpauth.W053"]
    settings.MCPAUTH_ENCRYPTION_KEYS = []
    assert ids(check_downstreams()) == ["mcpauth.E051", *warnings]
    settings.MCPAUTH_ENCRYPTION_KEYS = ["too-short"]
    assert ids(check_downstreams()) == ["mcpauth.E051", "mcpauth.E052", *warnings]
    settings.MCPAUTH_ENCRYPTION_KEYS = [KEY, KEY]
    assert ids(check_downstreams()) == ["mcpauth.E052", *warnings]
    settings.MCPAUTH_ENCRYPTION_KEYS = f"{KEY}, {OLD_KEY}"  # the env form
    assert ids(check_downstreams()) == warnings
    assert [m.msg for m in check_downstreams()] == [
        "Downstream 'idp' sends credentials over plain http (http://idp.example/token).",
        "Downstream 'lan' sends credentials over plain http (http://10.0.0.5/api).",
    ]


def test_settings_module_reads_downstreams_from_the_environment() -> None:
    import subprocess
    import sys

    code = "from django.conf import settings; print(json.dumps(settings.MCPAUTH_DOWNSTREAMS))"
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "1",
        "MCPAUTH_DOWNSTREAMS": '{"crm": {"url": "https://crm.example", "auth": "api_key"}}',
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", f"import json, django; django.setup(); {code}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=str(__import__("tests.servers").servers.ROOT),
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "crm": {"url": "https://crm.example", "auth": "api_key"}
    }


# --- encryption at rest -----------------------------------------------------------------------


@pytest.fixture
def declared(settings: Any, db: None) -> None:
    settings.MCPAUTH_ENCRYPTION_KEYS = [KEY]
    settings.MCPAUTH_DOWNSTREAMS = {
        "crm": {"url": "https://crm.example", "auth": "api_key"},
        "tcrm": {"url": "https://tcrm.example", "auth": "api_key", "per_tenant": True},
        "mesh": {"url": "https://mesh.example", "auth": "forward"},
    }


def test_secrets_are_encrypted_bound_to_their_row_and_survive_a_key_rotation(
    declared: None, settings: Any
) -> None:
    acme = Tenant.objects.create(external_id="acme")
    globex = Tenant.objects.create(external_id="globex")
    row = DownstreamSecret(downstream="tcrm", tenant=acme)
    row.set_secret("acme-secret-value-1")
    row.save()
    assert "acme-secret-value-1" not in row.ciphertext and row.version == 1
    stored = DownstreamSecret.objects.get()
    assert stored.decrypted() == "acme-secret-value-1"

    # moved to another tenant (a database edit): it no longer decrypts
    moved = DownstreamSecret.objects.get()
    moved.tenant = globex
    with pytest.raises(crypto.KeyUnavailable):
        moved.decrypted()

    # a new key first, the old one after it: old secrets still decrypt; reencrypt moves them
    old_key_id = stored.key_id
    settings.MCPAUTH_ENCRYPTION_KEYS = [OLD_KEY, KEY]
    assert DownstreamSecret.objects.get().decrypted() == "acme-secret-value-1"
    out = StringIO()
    call_command("downstreams", "reencrypt", stdout=out)
    assert "Re-encrypted 1 secret(s)" in out.getvalue()
    settings.MCPAUTH_ENCRYPTION_KEYS = [OLD_KEY]  # the retired key is gone
    again = DownstreamSecret.objects.get()
    assert again.key_id != old_key_id and again.decrypted() == "acme-secret-value-1"
    assert AuditEvent.objects.filter(method="config/downstream_secret.reencrypt").count() == 1

    settings.MCPAUTH_ENCRYPTION_KEYS = [KEY]  # only the retired key: nothing decrypts
    with pytest.raises(crypto.KeyUnavailable):
        DownstreamSecret.objects.get().decrypted()
    with pytest.raises(CommandError, match="cannot be decrypted"):
        call_command("downstreams", "reencrypt", stdout=StringIO())


def test_model_validation_follows_the_declaration(declared: None) -> None:
    from django.core.exceptions import ValidationError

    acme = Tenant.objects.create(external_id="acme")
    for row, field in (
        (DownstreamSecret(downstream="nope"), "downstream"),
        (DownstreamSecret(downstream="mesh"), "downstream"),  # forward keeps no secret
        (DownstreamSecret(downstream="tcrm"), "tenant"),  # per_tenant: a tenant is needed
        (DownstreamSecret(downstream="crm", tenant=acme), "tenant"),  # shared: none
    ):
        with pytest.raises(ValidationError) as info:
            row.clean()
        assert field in info.value.message_dict
    with pytest.raises(ValidationError):
        DownstreamSecret(downstream="crm").set_secret("two\nlines")


# --- the command: write-only, from stdin, audited ---------------------------------------------


def run(*args: str, stdin: str = "") -> str:
    out = StringIO()
    call_command("downstreams", *args, stdin=StringIO(stdin), stdout=out)
    return out.getvalue()


def test_command_reads_the_secret_from_stdin_never_shows_it_and_audits(declared: None) -> None:
    Tenant.objects.create(external_id="acme")
    secret, rotated = "crm-cli-secret-000001", "crm-cli-secret-000002"
    printed = run("set-secret", "crm", stdin=secret + "\n")
    assert printed.startswith("Stored the secret of crm (every tenant) (version 1, key ")
    printed += run("set-secret", "crm", stdin=rotated + "\r\n")
    assert "Rotated the secret of crm (every tenant) (version 2" in printed
    assert DownstreamSecret.objects.get().decrypted() == rotated
    printed += run("set-secret", "tcrm", "--tenant", "acme", stdin="acme-tenant-secret-1")
    listing = run("list") + run("list", "--json")
    data = json.loads(run("list", "--json"))
    assert [(d["name"], len(d["secrets"])) for d in data] == [("crm", 1), ("mesh", 0), ("tcrm", 1)]
    assert data[2]["secrets"][0]["tenant"] == "acme"
    printed += run("delete-secret", "crm")
    assert not DownstreamSecret.objects.filter(downstream="crm").exists()
    for text in (printed, listing):
        for value in (secret, rotated, "acme-tenant-secret-1"):
            assert value not in text

    rows = AuditEvent.objects.filter(method__startswith="config/downstream_secret.")
    assert sorted(rows.values_list("method", "tenant")) == [
        ("config/downstream_secret.create", ""),
        ("config/downstream_secret.create", "acme"),
        ("config/downstream_secret.delete", ""),
        ("config/downstream_secret.rotate", ""),
    ]
    rotate = rows.get(method="config/downstream_secret.rotate")
    assert rotate.actor.startswith("cli:") and rotate.arguments["changes"]["version"] == [1, 2]
    dumped = json.dumps(list(rows.values_list("arguments", flat=True)))
    for value in (secret, rotated, "acme-tenant-secret-1"):
        assert value not in dumped


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("set-secret", "nope"), "x", "No downstream of this name is declared"),
        (("set-secret", "tcrm"), "x", "choose the tenant"),
        (("set-secret", "tcrm", "--tenant", "ghost"), "x", "Unknown tenant 'ghost'"),
        (("set-secret", "crm"), "\n", "The secret must not be empty"),
        (("delete-secret", "crm"), "", "No secret is stored for crm"),
    ],
)
def test_command_refusals(declared: None, args: tuple[str, ...], stdin: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args, stdin=stdin)
    assert not AuditEvent.objects.exists()


# --- the admin: write-only ----------------------------------------------------------------------


def test_admin_sets_and_rotates_but_never_shows_a_secret(declared: None, admin_client: Any) -> None:
    add = reverse("admin:mcpauth_downstreamsecret_add")
    form = admin_client.get(add).content.decode()
    assert 'type="password"' in form and "crm (api_key)" in form
    resp = admin_client.post(add, {"downstream": "crm", "secret": "admin-secret-0000001"})
    assert resp.status_code == 302, resp.content.decode()[:2000]
    row = DownstreamSecret.objects.get()
    assert row.decrypted() == "admin-secret-0000001"

    change = reverse("admin:mcpauth_downstreamsecret_change", args=[row.pk])
    page = admin_client.get(change).content.decode()
    listing = admin_client.get(reverse("admin:mcpauth_downstreamsecret_changelist"))
    for html in (page, listing.content.decode()):
        assert "admin-secret-0000001" not in html and row.ciphertext not in html
    # empty: kept; a new value: rotated (the next tool call uses it)
    assert admin_client.post(change, {"secret": ""}).status_code == 302
    assert DownstreamSecret.objects.get().version == 1
    assert admin_client.post(change, {"secret": "admin-secret-0000002"}).status_code == 302
    row = DownstreamSecret.objects.get()
    assert (row.version, row.decrypted()) == (2, "admin-secret-0000002")
    assert "admin-secret-0000002" not in admin_client.get(change).content.decode()

    methods = list(
        AuditEvent.objects.filter(method__startswith="config/downstream_secret.")
        .order_by("id")
        .values_list("method", "actor")
    )
    assert methods == [
        ("config/downstream_secret.create", "admin"),
        ("config/downstream_secret.rotate", "admin"),
    ]
    dumped = json.dumps(list(AuditEvent.objects.values_list("arguments", flat=True)))
    assert "admin-secret-000000" not in dumped
    # an add without a secret is refused
    refused = admin_client.post(add, {"downstream": "crm", "secret": ""})
    assert refused.status_code == 200 and "Enter the secret." in refused.content.decode()


# --- the database keeps tool bodies out of the secrets table ----------------------------------


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row-level security is PostgreSQL's")
def test_postgresql_a_tool_body_cannot_read_the_secrets_table(declared: None) -> None:
    acme = Tenant.objects.create(external_id="acme")
    run("set-secret", "crm", stdin="pg-secret-00000001")
    assert rls.problems() == []
    with confined(acme.pk):
        rls.ensure()
        with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT ciphertext FROM mcpauth_downstreamsecret")
    # the platform's own read, in the same kind of body, works
    from mcpauth.downstream.conf import get_settings as downstream_settings
    from mcpauth.downstream.credentials import stored_secret

    with transaction.atomic(), confined(acme.pk):
        rls.ensure()
        assert stored_secret(downstream_settings().downstreams["crm"], None) == (
            "pg-secret-00000001"
        )
        assert Tenant.objects.filter(pk=acme.pk).exists()  # and the body carries on


# --- outbound records ---------------------------------------------------------------------------


def test_outbound_outcomes_follow_the_status() -> None:
    assert [records.outcome_for_status(s) for s in (200, 302, 400, 401, 403, 404, 429, 500)] == [
        "ok",
        "ok",
        "invalid_request",
        "denied",
        "denied",
        "invalid_request",
        "rate_limited",
        "server_error",
    ]


@pytest.mark.django_db
def test_beyond_the_cap_one_summary_row_counts_the_rest(
    monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    monkeypatch.setattr(records, "MAX_PENDING", 3)
    call = CallContext(request_id="r-cap", client_ip="127.0.0.1", user_agent="", tool="t")
    for i in range(5):
        entry = records.Outbound("crm", "api_key", "GET", "crm", f"/{i}", at_ms=float(i))
        assert records.add(call, entry) is False
    with django_capture_on_commit_callbacks(execute=True):
        records.flush(call)
    rows = list(AuditEvent.objects.filter(request_id="r-cap").order_by("id"))
    assert [r.method for r in rows] == ["outbound/crm"] * 3 + ["outbound/*"]
    assert rows[-1].error_message.startswith("2 more outbound calls")
    assert call.outbound.pending == [] and call.outbound.dropped == 0
    records.flush(call)  # nothing twice
    assert AuditEvent.objects.filter(request_id="r-cap").count() == 4
