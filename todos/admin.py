from django.contrib import admin

from mcpauth.admin import TenantOwnedAdmin
from todos.models import Todo


@admin.register(Todo)
class TodoAdmin(TenantOwnedAdmin):
    """Every change here is audited (``data/todos.todo.<action>``, with the todo's tenant)."""

    list_display = ("title", "tenant", "completed", "created_by", "created_at", "updated_at")
    list_filter = ("completed", "tenant")
    search_fields = ("title", "created_by", "=id")
    list_select_related = ("tenant",)
    readonly_fields = ("id", "created_by", "created_at", "updated_at")
    date_hierarchy = "created_at"
    show_full_result_count = False
