from django.db import models

from mcpauth.models import TenantOwned


class Label(models.Model):
    name = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.name


class Shelf(TenantOwned):
    """A tenant's shelf: labels (m2m) and books (edited inline in the admin)."""

    title = models.CharField(max_length=100)
    labels = models.ManyToManyField(Label, blank=True)

    def __str__(self) -> str:
        return self.title


class Book(models.Model):
    shelf = models.ForeignKey(Shelf, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.title
