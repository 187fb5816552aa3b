"""Tenants, client bindings and client policies get an issuer (filled by 0004)."""

from django.db import migrations, models

HELP = "The identity provider (its iss) whose tokens name this; its namespace."


def issuer_field():
    return models.CharField(default="", help_text=HELP, max_length=255)


class Migration(migrations.Migration):
    dependencies = [
        ("mcpauth", "0002_seed_scope_mappings"),
    ]

    operations = [
        migrations.AddField("tenant", "issuer", issuer_field()),
        migrations.AddField("clientbinding", "issuer", issuer_field()),
        migrations.AddField("clientpolicy", "issuer", issuer_field()),
    ]
