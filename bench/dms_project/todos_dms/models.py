"""The project's ``todos_todo`` table (``todos/models.py``, its migrations), unmanaged: this
project neither creates nor migrates it; the bench's ``migrate`` does."""

from __future__ import annotations

import uuid

from django.db import models

TITLE_MAX = 200
DESCRIPTION_MAX = 5000


class Todo(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    #: mcpauth_tenant's bigint key; the bench tenant is BENCH_TENANT_PK
    tenant_id = models.BigIntegerField()
    title = models.CharField(max_length=TITLE_MAX)
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX)
    completed = models.BooleanField(default=False)
    created_by = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "todos_todo"

    def __str__(self) -> str:
        return self.title
