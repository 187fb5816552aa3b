"""Look-alike identifiers cannot pass for each other in the admin and the overview.

``acme``, ``Acme``, ``\\u0430cme`` (a Cyrillic a), ``\\uff41\\uff43\\uff4d\\uff45`` (full
width), a tool named ``\\u202eodot_eteled`` (which a browser draws as ``delete_todo``) and ids
with a zero-width joiner render distinguishably everywhere staff read them: the audit
changelist, its filters and chips, the detail page, the overview, the tenant, client and todo
admins. No page holds the raw character in what it shows (text and tooltips; links and form
values keep the exact stored value); plain ASCII identifiers render exactly as before.
"""

from __future__ import annotations

import html
import re
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from audit.display import reveal_hidden, reveal_hidden_text, visible, visible_text
from audit.models import AuditEvent, Outcome
from audit.recorder import record
from mcpauth.models import ClientBinding, ClientPolicy, Tenant
from todos.models import Todo

pytestmark = pytest.mark.django_db

CYRILLIC = "\u0430cme"  # CYRILLIC SMALL LETTER A, then "cme"
FULLWIDTH = "\uff41\uff43\uff4d\uff45"  # FULLWIDTH LATIN SMALL LETTER A, C, M, E
LOOKALIKES = ("acme", "Acme", CYRILLIC, FULLWIDTH)
BIDI_TOOL = "\u202eodot_eteled"  # drawn right to left: "delete_todo"
ZWJ_CLIENT = "svc\u200dbot"  # zero-width joiner: looks like "svcbot"
ZWJ_SUBJECT = "user\u200b-1"  # zero-width space
#: Characters that must never reach a page raw.
RAW = ("\u0430", "\uff41", "\u202e", "\u200d", "\u200b")


@pytest.fixture
def auditor(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("auditor", "a@example.com", "pw"))
    return client


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:2000]
    return response.content.decode()


def shown(content: str) -> str:
    """What a person reads: text nodes, and the ``title``/``aria-label`` tooltips.

    Attribute values that are data (``href``, ``value`` of inputs and options) keep the exact
    stored value and are not shown as such.
    """
    content = re.sub(r"<(script|style)\b.*?</\1>", "", content, flags=re.S)
    tips = re.findall(r'(?:title|aria-label)="([^"]*)"', content)
    text = re.sub(r"<[^>]*>", " ", content)
    return html.unescape(text + "\n" + "\n".join(tips))


def assert_no_raw(content: str) -> None:
    text = shown(content)
    for char in RAW:
        assert char not in text, f"raw U+{ord(char):04X} shown on the page"


def cell_texts(content: str, css_class: str) -> list[str]:
    """The text of every table cell with ``css_class``, tags stripped, entities decoded."""
    cells = re.findall(rf'<t[dh] class="{css_class}"[^>]*>(.*?)</t[dh]>', content, re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]


def seed_calls() -> None:
    for tenant in LOOKALIKES:
        record(
            outcome=Outcome.OK,
            status=200,
            request_id=uuid.uuid4().hex,
            method="tools/call",
            tool="list_todos",
            tenant=tenant,
            client_id="svc",
            subject="user-1",
        )
    record(
        outcome=Outcome.INVALID_REQUEST,
        status=200,
        request_id="bidi-1",
        method="tools/call",
        tool=BIDI_TOOL,
        tenant=CYRILLIC,
        client_id=ZWJ_CLIENT,
        subject=ZWJ_SUBJECT,
        error_code="unknown_tool",
        error_message=f"Unknown tool: {BIDI_TOOL}",
    )


# --- the helper ---------------------------------------------------------------------------------


def test_ascii_is_unchanged_and_every_lookalike_reads_differently():
    assert visible("acme") == "acme" and visible_text("acme") == "acme"
    assert visible("<b>x</b>") == escape("<b>x</b>")  # escaped exactly as before
    assert visible("") == "" and visible(None) == ""
    shown = {visible_text(t) for t in LOOKALIKES}
    assert shown == {"acme", "Acme", "\\u0430cme", "\\uff41\\uff43\\uff4d\\uff45"}
    assert visible_text(BIDI_TOOL) == "\\u202eodot_eteled"
    assert visible_text(ZWJ_CLIENT) == "svc\\u200dbot"
    assert visible_text("\U0001f600") == "\\U0001f600"


def test_escaped_characters_are_marked_and_named():
    cyrillic = str(visible(CYRILLIC))
    assert cyrillic == (
        '<span class="mcp-esc mcp-esc-other" title="U+0430 CYRILLIC SMALL LETTER A (not ASCII)">'
        "\\u0430</span>cme"
    )
    bidi = str(visible(BIDI_TOOL))
    assert 'class="mcp-esc mcp-esc-bidi"' in bidi and "RIGHT-TO-LEFT OVERRIDE" in bidi
    zwj = str(visible(ZWJ_CLIENT))
    assert 'class="mcp-esc mcp-esc-hidden"' in zwj and "ZERO WIDTH JOINER" in zwj
    assert "mcp-esc-hidden" in str(visible("a\u00a0b"))  # no-break space: not U+0020
    assert "\\u0000" in str(visible("a\x00b"))
    # A literal backslash-u in ASCII is not marked: the span tells the two apart.
    assert "mcp-esc" not in str(visible("\\u0430cme"))


def test_free_text_keeps_letters_and_marks_only_hidden_characters():
    message = f"Müller: unknown tool {BIDI_TOOL}\nnext line"
    shown = str(reveal_hidden(message))
    assert "Müller" in shown and "\n" in shown and "\u202e" not in shown
    assert 'mcp-esc-bidi" title="U+202E' in shown
    assert reveal_hidden_text(message) == "Müller: unknown tool \\u202eodot_eteled\nnext line"


# --- the audit changelist, its filters and the detail page -------------------------------------


def test_changelist_shows_lookalikes_distinguishably(auditor):
    for ext in LOOKALIKES:
        Tenant.objects.create(external_id=ext)
    seed_calls()
    content = page(auditor, reverse("admin:audit_auditevent_changelist"))
    assert_no_raw(content)
    # ASCII exactly as before.
    assert 'title="tenant: acme (show only these rows)">acme</a>' in content
    assert 'title="tenant: Acme (show only these rows)">Acme</a>' in content
    # The look-alikes: marked, named, and their links filter by the exact stored value.
    assert (
        'href="/admin/audit/auditevent/?tenant=%D0%B0cme" '
        'title="tenant: \\u0430cme (show only these rows)">'
        '<span class="mcp-esc mcp-esc-other" title="U+0430 CYRILLIC SMALL LETTER A (not ASCII)">'
        "\\u0430</span>cme</a>"
    ) in content
    assert "\\uff41\\uff43\\uff4d\\uff45</span>" in content
    assert '<span class="mcp-esc mcp-esc-bidi"' in content and "odot_eteled" in content
    assert "svc<span" in content and "\\u200d</span>bot" in content
    # The four tenants read as four different strings.
    links = re.findall(r'<a class="mcp-filter" href="[^"]*\?tenant=[^"]*"[^>]*>(.*?)</a>', content)
    tenants = {html.unescape(re.sub(r"<[^>]+>", "", link)) for link in links}
    assert tenants == {"acme", "Acme", "\\u0430cme", "\\uff41\\uff43\\uff4d\\uff45"}
    # The filters' choices.
    sidebar = content[content.index('id="changelist-filter"') :]
    assert '<a href="?tenant=acme">acme</a>' in sidebar  # ASCII as before
    assert '<a href="?tenant=%D0%B0cme"><span class="mcp-esc mcp-esc-other"' in sidebar


def test_filter_chip_and_filter_choice_of_a_lookalike(auditor):
    Tenant.objects.create(external_id=CYRILLIC, name="Acme Corp")
    seed_calls()
    url = reverse("admin:audit_auditevent_changelist")
    content = page(auditor, f"{url}?tenant={CYRILLIC}&tool={BIDI_TOOL}")
    assert_no_raw(content)
    chips = content[content.index('id="audit-active-filters"') :]
    assert 'tenant:</span> <span class="mcp-esc mcp-esc-other"' in chips
    assert 'aria-label="Remove tenant \\u0430cme"' in chips
    assert 'aria-label="Remove tool \\u202eodot_eteled"' in chips
    sidebar = content[content.index('id="changelist-filter"') :]
    assert 'Acme Corp (<span class="mcp-esc mcp-esc-other"' in sidebar
    # The selected tool is not among the registry's: it stays listed, marked.
    assert '<span class="mcp-esc mcp-esc-bidi"' in sidebar


def test_detail_page_shows_every_identifier_visibly(auditor):
    seed_calls()
    row = AuditEvent.objects.get(request_id="bidi-1")
    content = page(auditor, reverse("admin:audit_auditevent_change", args=[row.pk]))
    assert_no_raw(content)
    for field in ("tenant", "client_id", "subject", "tool"):
        cell = re.search(
            r'<div class="readonly">(.*?)</div>', content[content.index(f"field-{field}") :], re.S
        )
        assert cell and "mcp-esc" in cell.group(1), field
    # The heading and the page title (text only there) name the row visibly.
    title = re.search(r"<title>(.*?)</title>", content, re.S).group(1)
    assert "\\u202eodot_eteled" in title
    assert re.search(r"<h2>.*mcp-esc-bidi.*</h2>", content)
    # The reason: free text, its bidi control marked.
    assert 'Unknown tool: <span class="mcp-esc mcp-esc-bidi"' in content
    # An ASCII row's fields read as before.
    plain = AuditEvent.objects.filter(tenant="acme").get()
    content = page(auditor, reverse("admin:audit_auditevent_change", args=[plain.pk]))
    assert re.search(r'field-tenant.*?<div class="readonly">acme</div>', content, re.S)
    assert "mcp-esc" not in content


def test_related_links_on_the_detail_page_are_visible(auditor):
    seed_calls()
    row = AuditEvent.objects.get(request_id="bidi-1")
    content = page(auditor, reverse("admin:audit_auditevent_change", args=[row.pk]))
    related = content[content.index("field-related") :]
    assert "all rows of this client</a> <code>svc<span" in related


# --- the overview --------------------------------------------------------------------------------


def test_overview_shows_lookalikes_distinguishably(auditor):
    for ext in LOOKALIKES:
        Tenant.objects.create(external_id=ext, name="Acme" if ext == CYRILLIC else "")
    seed_calls()
    url = reverse("admin:audit_overview_changelist")
    content = page(auditor, f"{url}?window=1h")
    assert_no_raw(content)
    tops = cell_texts(content, "mcp-top-name")
    for expected in ("acme", "Acme", "\\u0430cme", "\\uff41\\uff43\\uff4d\\uff45"):
        assert expected in tops
    assert "\\u202eodot_eteled" in tops and "svc\\u200dbot" in tops
    assert 'title="\\u202eodot_eteled"' in content
    # The tenant select (options hold text only): escaped text.
    assert ">Acme (\\u0430cme)</option>" in content
    assert ">\\uff41\\uff43\\uff4d\\uff45</option>" in content
    assert '<option value="acme">acme</option>' in content  # ASCII as before
    # Narrowed to a look-alike: the window line marks it.
    content = page(auditor, f"{url}?window=1h&tenant={CYRILLIC}&tool={BIDI_TOOL}")
    assert_no_raw(content)
    line = content[content.index('id="audit-window-text"') :]
    assert 'tenant <strong><span class="mcp-esc mcp-esc-other"' in line
    assert 'tool <strong><span class="mcp-esc mcp-esc-bidi"' in line


# --- the tenant, client and todo admins ---------------------------------------------------------


def test_tenant_admin_lists_lookalikes_distinguishably(auditor):
    for ext in LOOKALIKES:
        Tenant.objects.create(external_id=ext, name=ext)
    content = page(auditor, reverse("admin:mcpauth_tenant_changelist"))
    assert_no_raw(content)
    ids = cell_texts(content, "field-external_id_column")
    assert sorted(ids) == sorted(["acme", "Acme", "\\u0430cme", "\\uff41\\uff43\\uff4d\\uff45"])
    names = cell_texts(content, "field-name_column")
    assert len(set(names)) == 4
    assert ">acme</a></th>" in content  # ASCII as before, the link to the tenant
    # The change page: heading, title and breadcrumbs.
    tenant = Tenant.objects.get(external_id=CYRILLIC)
    content = page(auditor, reverse("admin:mcpauth_tenant_change", args=[tenant.pk]))
    assert_no_raw(content.split('name="external_id"')[0])  # the form field itself is the value
    assert '<h2><span class="mcp-esc mcp-esc-other"' in content
    assert "\\u0430cme | Change tenant" in content
    assert "&rsaquo; \\u0430cme" in content


def test_client_binding_and_policy_lists_show_client_ids_visibly(auditor):
    acme = Tenant.objects.create(external_id=CYRILLIC)
    Tenant.objects.create(external_id="acme")  # two tenants: the filter is shown
    ClientBinding.objects.create(client_id=ZWJ_CLIENT, tenant=acme)
    ClientPolicy.objects.create(client_id=ZWJ_CLIENT, mode="blocked")
    for name in ("clientbinding", "clientpolicy"):
        content = page(auditor, reverse(f"admin:mcpauth_{name}_changelist"))
        assert_no_raw(content)
        assert ["svc\\u200dbot"] == cell_texts(content, "field-client_id_column")
        assert "audit rows of svc<span" in content
    content = page(auditor, reverse("admin:mcpauth_clientbinding_changelist"))
    # the tenant is labelled with its issuer: "\\u0430cme (https://issuer...)"
    assert [t.split(" (")[0] for t in cell_texts(content, "field-tenant_column")] == ["\\u0430cme"]
    sidebar = content[content.index('id="changelist-filter"') :]
    assert '<span class="mcp-esc mcp-esc-other"' in sidebar and ">acme</a>" in sidebar


def test_todo_admin_shows_the_tenant_visibly_in_list_filter_and_form(client):
    user = User.objects.create_user("erin", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="todos", codename__endswith="_todo")
    )
    client.force_login(user)
    real = Tenant.objects.create(external_id="acme", name="Acme")
    fake = Tenant.objects.create(external_id=CYRILLIC, name="Acme")
    for tenant in (real, fake):
        Todo.all_tenants.create(tenant=tenant, title="t", created_by="u")
    content = page(client, reverse("admin:todos_todo_changelist"))
    assert_no_raw(content)
    assert sorted(cell_texts(content, "field-tenant_column")) == [
        "Acme (\\u0430cme)",
        "Acme (acme)",
    ]
    sidebar = content[content.index('id="changelist-filter"') :]
    assert "Acme (acme)</a>" in sidebar and 'Acme (<span class="mcp-esc' in sidebar
    content = page(client, reverse("admin:todos_todo_add"))
    assert_no_raw(content)
    assert ">Acme (\\u0430cme)</option>" in content and ">Acme (acme)</option>" in content


def test_the_template_filters():
    from django.template import Context, Template

    rendered = Template("{% load audit_display %}{{ v|visible }}|{{ v|visible_text }}").render(
        Context({"v": CYRILLIC})
    )
    assert rendered == f"{visible(CYRILLIC)}|\\u0430cme"
