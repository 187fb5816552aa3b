"""Migration operations for apps that bring tools: seed their default scope mappings.

An app that wants default scopes ships them in its own data migration::

    from mcpauth.operations import SeedScopeMappings

    class Migration(migrations.Migration):
        dependencies = [("notes", "0001_initial"), ("mcpauth", "0001_initial")]
        operations = [
            SeedScopeMappings({"notes:read": ("Read notes", ["notes.view_note"])}),
        ]

Mappings that already exist are left as they are (an operator may have changed them), and the
reverse operation removes only the scopes this operation names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

#: ``{scope: (description, ["app_label.codename", ...])}``
ScopeDefaults = Mapping[str, tuple[str, Sequence[str]]]


def seed_scope_mappings(apps: Any, defaults: ScopeDefaults) -> None:
    """Create the missing mappings of ``defaults`` (``apps``: a migration state or the registry)."""
    for app_label in {p.split(".", 1)[0] for _, perms in defaults.values() for p in perms}:
        # Permissions are normally created after all migrations; make sure these exist now.
        app_config = apps.get_app_config(app_label)
        models_module = getattr(app_config, "models_module", None)
        app_config.models_module = models_module or True  # migration-state stubs lack it
        try:
            create_permissions(app_config, apps=apps, verbosity=0)
        finally:
            app_config.models_module = models_module
    permission_model = apps.get_model("auth", "Permission")
    mapping_model = apps.get_model("mcpauth", "ScopeMapping")
    for scope, (description, names) in defaults.items():
        mapping, created = mapping_model.objects.get_or_create(
            scope=scope, defaults={"description": description}
        )
        if not created:
            continue
        perms = []
        for name in names:
            app_label, _, codename = name.partition(".")
            perms.append(
                permission_model.objects.get(content_type__app_label=app_label, codename=codename)
            )
        mapping.permissions.set(perms)


class SeedScopeMappings(migrations.RunPython):
    """``RunPython`` that seeds ``defaults`` forwards and removes those scopes backwards."""

    def __init__(self, defaults: ScopeDefaults) -> None:
        self.defaults = dict(defaults)

        def forwards(apps: Any, schema_editor: Any) -> None:
            seed_scope_mappings(apps, self.defaults)

        def backwards(apps: Any, schema_editor: Any) -> None:
            apps.get_model("mcpauth", "ScopeMapping").objects.filter(
                scope__in=self.defaults
            ).delete()

        super().__init__(forwards, backwards)

    def describe(self) -> str:
        return f"Seed scope mappings {', '.join(sorted(self.defaults))}"
