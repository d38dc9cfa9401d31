from django.apps import AppConfig


class ServingConfig(AppConfig):
    """OpenAI-compatible inference: the web routes (torch-free) and the inference process's engine."""

    name = "webapp.serving"
    verbose_name = "Serving"
    default_auto_field = "django.db.models.BigAutoField"
