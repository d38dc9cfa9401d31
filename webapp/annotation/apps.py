from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "webapp.annotation"
    verbose_name = "Annotation"

    def ready(self):
        from webapp.policies.signals import version_served

        from .services import on_version_served

        # When a new version is served, older versions' open items leave the queue (unless the project drains them).
        version_served.connect(on_version_served, dispatch_uid="annotation.retire_unserved")
