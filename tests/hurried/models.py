from django.db import models

from mcpauth.models import TenantOwned


class Project(TenantOwned):
    name = models.CharField(max_length=100)

    class Meta:  # does not extend TenantOwned.Meta: the platform must not depend on it
        ordering = ["id"]


class Task(TenantOwned):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    title = models.CharField(max_length=100)


class Comment(TenantOwned):
    todo = models.ForeignKey("todos.Todo", on_delete=models.CASCADE, related_name="comments")
    text = models.TextField()
