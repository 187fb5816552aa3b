"""Tools as a hurried author writes them: every one of them must stay in the caller's tenant."""

from typing import Any

from django.db import connection
from django.shortcuts import get_object_or_404

from mcpauth import tool
from todos.models import Todo

from .models import Comment, Project, Task

READ = ["hurried.view_comment"]
WRITE = ["hurried.add_comment"]


@tool(permissions=WRITE)
def add_comment(todo_id: str, text: str) -> dict[str, Any]:
    comment = Comment.objects.current().create(todo_id=todo_id, text=text)
    return {"id": comment.pk}


@tool(permissions=WRITE)
def add_comment_by_save(todo_id: str, text: str) -> dict[str, Any]:
    comment = Comment(todo_id=todo_id, text=text)  # no tenant given: the caller's is stamped
    comment.save()
    return {"id": comment.pk}


@tool(permissions=READ, read_only=True)
def comment_titles() -> list[dict[str, Any]]:
    return list(Comment.objects.current().values("text", "todo__title"))


@tool(permissions=READ, read_only=True)
def comment_titles_selected() -> list[str]:
    return [c.todo.title for c in Comment.objects.current().select_related("todo")]


@tool(permissions=READ, read_only=True)
def comment_todo_title(comment_id: int) -> str:
    return Comment.objects.current().get(pk=comment_id).todo.title  # lazy forward access


@tool(permissions=READ, read_only=True)
def todo_comments(todo_id: str) -> list[str]:
    todo = get_object_or_404(Todo, pk=todo_id)
    return [c.text for c in todo.comments.all()]


@tool(permissions=READ, read_only=True)
def prefetched_comments() -> dict[str, list[str]]:
    todos = Todo.all_tenants.prefetch_related("comments")
    return {t.title: [c.text for c in t.comments.all()] for t in todos}


@tool(permissions=READ, read_only=True)
def all_comments() -> list[str]:
    return [c.text for c in Comment.all_tenants.all()]


@tool(permissions=READ, read_only=True)
async def all_todo_titles_async() -> list[str]:
    return [t.title async for t in Todo.all_tenants.order_by("title")]


@tool(permissions=READ, read_only=True)
def raw_todo_titles() -> list[str]:
    return sorted(t.title for t in Todo.objects.current().raw("SELECT * FROM todos_todo"))


@tool(permissions=READ, read_only=True)
def raw_manager_titles() -> list[str]:
    return sorted(t.title for t in Todo.all_tenants.raw("SELECT * FROM todos_todo"))


@tool(permissions=READ, read_only=True)
def sql_todo_titles() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT title FROM todos_todo ORDER BY title")
        return [row[0] for row in cursor.fetchall()]


@tool(permissions=WRITE)
def sql_insert_comment(todo_id: str, tenant_id: int, text: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO hurried_comment (tenant_id, todo_id, text) VALUES (%s, %s, %s)",
            [tenant_id, todo_id.replace("-", ""), text],
        )
    return "inserted"


@tool(permissions=WRITE)
def move_comment(comment_id: int, tenant_id: int) -> str:
    comment = Comment.objects.current().get(pk=comment_id)
    comment.tenant_id = tenant_id
    comment.save()
    return "moved"


@tool(permissions=WRITE)
def overwrite_todo(todo_id: str, title: str) -> str:
    todo = Todo.objects.current().first()
    assert todo is not None
    todo.pk = todo_id
    todo.title = title
    todo.save()
    return "saved"


@tool(permissions=WRITE)
def delete_todo_by_pk(todo_id: str) -> str:
    Todo(pk=todo_id).delete()
    return "deleted"


@tool(permissions=WRITE)
def retarget_comment(comment_id: int, todo_id: str) -> int:
    return Comment.objects.current().filter(pk=comment_id).update(todo_id=todo_id)


@tool(permissions=WRITE)
def add_task(project_id: int, title: str) -> dict[str, Any]:
    task = Task.objects.current().create(project_id=project_id, title=title)
    return {"id": task.pk}


@tool(permissions=WRITE)
def add_project(name: str) -> dict[str, Any]:
    project = Project.objects.current().create(name=name)
    return {"id": project.pk}


@tool(permissions=READ, read_only=True)
def project_tasks(project_id: int) -> list[str]:
    project = Project.all_tenants.get(pk=project_id)
    return [t.title for t in project.tasks.all()]
