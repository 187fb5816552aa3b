from django.apps import AppConfig


class HurriedConfig(AppConfig):
    """A second domain app written the way a hurried tool author writes Django (issue 16).

    Foreign keys between tenant-owned models, ``Meta`` that does not extend ``TenantOwned.Meta``,
    and tools that reach for ``all_tenants``, ``get_object_or_404``, ``raw()``, hand-written SQL,
    instance ``save()``/``delete()`` by primary key. Isolation must hold anyway
    (tests/test_mcpauth_isolation.py).
    """

    name = "tests.hurried"
    label = "hurried"
    default_auto_field = "django.db.models.BigAutoField"
