from django.db import models

from mcpauth.models import TenantOwned


class Receipt(TenantOwned):
    """What a tool wrote in its transaction around a downstream call."""

    label = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)
