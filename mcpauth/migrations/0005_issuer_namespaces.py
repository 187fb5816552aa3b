"""Issuer namespaces: (issuer, external_id) and (issuer, client_id) are unique; tenant aliases."""

import django.db.models.deletion
from django.db import migrations, models

import mcpauth.models

HELP = "The identity provider (its iss) whose tokens name this; its namespace."


def issuer_field(default):
    return models.CharField(default=default, help_text=HELP, max_length=255)


class Migration(migrations.Migration):
    dependencies = [
        ("mcpauth", "0004_assign_issuers"),
    ]

    operations = [
        migrations.AlterField("tenant", "issuer", issuer_field(mcpauth.models.default_issuer)),
        migrations.AlterField(
            "clientbinding", "issuer", issuer_field(mcpauth.models.default_issuer)
        ),
        migrations.AlterField(
            "clientpolicy", "issuer", issuer_field(mcpauth.models.default_issuer)
        ),
        migrations.AlterField("tenant", "external_id", models.CharField(max_length=255)),
        migrations.AlterField("clientbinding", "client_id", models.CharField(max_length=255)),
        migrations.AlterField("clientpolicy", "client_id", models.CharField(max_length=255)),
        migrations.AddConstraint(
            "tenant",
            models.UniqueConstraint(
                fields=("issuer", "external_id"), name="mcpauth_tenant_issuer_external_id"
            ),
        ),
        migrations.AddConstraint(
            "clientbinding",
            models.UniqueConstraint(
                fields=("issuer", "client_id"), name="mcpauth_clientbinding_issuer_client_id"
            ),
        ),
        migrations.AddConstraint(
            "clientpolicy",
            models.UniqueConstraint(
                fields=("issuer", "client_id"), name="mcpauth_clientpolicy_issuer_client_id"
            ),
        ),
        migrations.AlterModelOptions("tenant", {"ordering": ["external_id", "issuer"]}),
        migrations.AlterModelOptions("clientbinding", {"ordering": ["client_id", "issuer"]}),
        migrations.AlterModelOptions(
            "clientpolicy",
            {"ordering": ["client_id", "issuer"], "verbose_name_plural": "client policies"},
        ),
        migrations.CreateModel(
            name="TenantAlias",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("issuer", issuer_field(mcpauth.models.default_issuer)),
                (
                    "external_id",
                    models.CharField(
                        help_text="The tenant claim value, as this issuer's tokens carry it.",
                        max_length=255,
                    ),
                ),
                ("note", models.CharField(blank=True, max_length=255)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="aliases",
                        to="mcpauth.tenant",
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "tenant aliases",
                "ordering": ["issuer", "external_id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("issuer", "external_id"),
                        name="mcpauth_tenantalias_issuer_external_id",
                    )
                ],
            },
        ),
    ]
