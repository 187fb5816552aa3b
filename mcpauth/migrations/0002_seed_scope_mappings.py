"""Formerly seeded the todo scopes; apps seed their own now (todos.0003, mcpauth.operations).

Kept as a no-op so databases that applied it keep a consistent migration history.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("mcpauth", "0001_initial")]
    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
