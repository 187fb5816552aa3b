from django.db import models

from mcpauth.models import TenantOwned


class Note(TenantOwned):
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
