"""Seed the default scope map: todo:read → view; todo:write → view/add/change/delete."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

DEFAULT_MAPPING = {
    "todo:read": ("Read todos", ("view_todo",)),
    "todo:write": ("Create, update and delete todos",
                   ("view_todo", "add_todo", "change_todo", "delete_todo")),
}


def seed(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure todos' exist now.
    app_config = apps.get_app_config("todos")
    app_config.models_module = True  # migration-state stubs lack it; create_permissions needs it
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    ScopeMapping = apps.get_model("mcpauth", "ScopeMapping")
    for scope, (description, codenames) in DEFAULT_MAPPING.items():
        mapping, created = ScopeMapping.objects.get_or_create(
            scope=scope, defaults={"description": description}
        )
        if created:
            mapping.permissions.set(
                Permission.objects.filter(content_type__app_label="todos", codename__in=codenames)
            )


def unseed(apps, schema_editor):
    apps.get_model("mcpauth", "ScopeMapping").objects.filter(scope__in=DEFAULT_MAPPING).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("mcpauth", "0001_initial"),
        ("todos", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(seed, unseed)]
