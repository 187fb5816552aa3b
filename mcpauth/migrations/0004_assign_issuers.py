"""Tenants, client bindings and client policies belong to an issuer; tenant aliases.

Existing rows are assigned to the issuer configured when this migration runs: the first of
``MCPAUTH_ISSUER``/``MCPAUTH_ISSUERS`` (or Scalekit's environment URL, or the development
issuer with ``DEBUG`` on). Before, every issuer's tokens shared one tenant per claim value;
afterwards another issuer's tokens with that claim value get a tenant of their own, unless an
operator maps them with a tenant alias (``manage.py clients alias``). With no issuer configured
at migration time the rows keep an empty issuer, which no token names: assign them with
``manage.py clients adopt ISSUER``.
"""

from django.db import migrations


def assign_issuer(apps, schema_editor):
    from mcpauth.conf import get_settings

    issuer = get_settings().default_issuer
    if not issuer:
        return
    for name in ("Tenant", "ClientBinding", "ClientPolicy"):
        model = apps.get_model("mcpauth", name)
        model.objects.using(schema_editor.connection.alias).filter(issuer="").update(
            issuer=issuer
        )


class Migration(migrations.Migration):
    dependencies = [
        ("mcpauth", "0003_issuer_fields"),
    ]

    operations = [
        migrations.RunPython(assign_issuer, migrations.RunPython.noop, elidable=False),
    ]
