from django.db import models


class Exhibit(models.Model):
    """Written by the zoo's write tools, to see what a failed call leaves behind."""

    label = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.label
