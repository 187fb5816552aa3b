"""The todo scopes of the Scalekit/FastMCP quickstart: todo:read and todo:write."""

from django.db import migrations

from mcpauth.operations import SeedScopeMappings

SCOPES = {
    "todo:read": ("Read todos", ["todos.view_todo"]),
    "todo:write": (
        "Create, update and delete todos",
        ["todos.view_todo", "todos.add_todo", "todos.change_todo", "todos.delete_todo"],
    ),
}


class Migration(migrations.Migration):
    dependencies = [
        ("todos", "0002_tenant_owned"),
        ("mcpauth", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [SeedScopeMappings(SCOPES)]
