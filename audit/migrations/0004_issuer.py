"""The issuer of the caller's token on every row (``db_default`` "": raw inserts stay valid;
rows written before carry ""). Seals of version 2 cover it (``audit.sealing``)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0003_seals_rollup_append_only'),
    ]

    operations = [
        migrations.AddField(
            model_name='auditevent',
            name='issuer',
            field=models.CharField(blank=True, db_default='', help_text="The identity provider that issued the caller's verified token (the namespace of client_id and subject); for a configuration change, the issuer of what changed.", max_length=255),
        ),
    ]
