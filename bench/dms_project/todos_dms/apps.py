from django.apps import AppConfig


class TodosDmsConfig(AppConfig):
    name = "dms_project.todos_dms"
    label = "todos_dms"
    default_auto_field = "django.db.models.BigAutoField"
