from django.contrib import admin

from mcpauth.models import ClientBinding, ClientPolicy, ScopeMapping, Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("external_id", "name", "suspended", "created_at")
    list_filter = ("suspended",)
    search_fields = ("external_id", "name")
    actions = ["suspend", "unsuspend"]

    @admin.action(description="Suspend selected tenants (403 on every call)")
    def suspend(self, request, queryset):  # type: ignore[no-untyped-def]
        for tenant in queryset:
            tenant.suspended = True
            tenant.save(update_fields=["suspended"])

    @admin.action(description="Lift suspension of selected tenants")
    def unsuspend(self, request, queryset):  # type: ignore[no-untyped-def]
        for tenant in queryset:
            tenant.suspended = False
            tenant.save(update_fields=["suspended"])


@admin.register(ScopeMapping)
class ScopeMappingAdmin(admin.ModelAdmin):
    list_display = ("scope", "description", "permission_list")
    search_fields = ("scope", "description")
    filter_horizontal = ("permissions",)

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).prefetch_related("permissions__content_type")

    @admin.display(description="permissions")
    def permission_list(self, obj: ScopeMapping) -> str:
        return ", ".join(
            sorted(f"{p.content_type.app_label}.{p.codename}" for p in obj.permissions.all())
        )


@admin.register(ClientBinding)
class ClientBindingAdmin(admin.ModelAdmin):
    list_display = ("client_id", "tenant", "created_at")
    search_fields = ("client_id", "tenant__external_id")
    autocomplete_fields = ("tenant",)


@admin.register(ClientPolicy)
class ClientPolicyAdmin(admin.ModelAdmin):
    list_display = ("client_id", "mode", "rate", "note", "updated_at")
    list_filter = ("mode",)
    search_fields = ("client_id",)
