from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "webapp.annotation"
    verbose_name = "Annotation"

    def ready(self):
        from webapp.policies.signals import version_served

        from .signals import pool_refill_on_version_served

        version_served.connect(pool_refill_on_version_served, dispatch_uid="annotation.pool_refill_on_version_served")
