from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "webapp.annotation"
    verbose_name = "Annotation"

    def ready(self):
        from webapp.policies import selectors as policy_selectors
        from webapp.policies.signals import version_served, version_served_committed

        from .selectors import version_levels

        # The versions page's mean rating per version reads levels as judgments.py defines them.
        policy_selectors.version_levels_reader = version_levels

        from .services import on_version_served

        # When a new version is served, older versions' open items leave the queue (unless the project drains them).
        version_served.connect(on_version_served, dispatch_uid="annotation.retire_unserved")

        from .signals import pool_refill_on_version_served

        # Once that has committed, the pool refills from the newly served version.
        version_served_committed.connect(
            pool_refill_on_version_served, dispatch_uid="annotation.pool_refill_on_version_served"
        )
