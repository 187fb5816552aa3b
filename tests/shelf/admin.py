from django.contrib import admin

from mcpauth.admin import TenantOwnedAdmin
from tests.shelf.models import Book, Shelf


class BookInline(admin.TabularInline):
    model = Book
    extra = 1


@admin.register(Shelf)
class ShelfAdmin(TenantOwnedAdmin):
    list_display = ("title", "tenant")
    list_filter = ("tenant",)
    filter_horizontal = ("labels",)
    inlines = [BookInline]
