from __future__ import annotations

import uuid

from django.db import models

from mcpauth.models import TenantOwned

TITLE_MAX = 200
DESCRIPTION_MAX = 5000


class Todo(TenantOwned):
    """A tenant's todo. ``Todo.objects.for_principal(p)`` is the only way services reach it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=TITLE_MAX)
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX)
    completed = models.BooleanField(default=False)
    created_by = models.CharField(max_length=255, help_text="Token subject that created it.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-created_at", "-id"]
        indexes = [
            # "a tenant's todos, newest first" and "... filtered by completed, newest first"
            models.Index(fields=["tenant", "-created_at", "-id"], name="todo_tenant_recent"),
            models.Index(
                fields=["tenant", "completed", "-created_at", "-id"], name="todo_tenant_done_recent"
            ),
        ]

    def __str__(self) -> str:
        return self.title
