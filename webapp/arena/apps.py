from django.apps import AppConfig


class ArenaConfig(AppConfig):
    name = "webapp.arena"
    verbose_name = "Version arena"

    def ready(self):
        from webapp.policies.signals import promotion_check

        from .selectors import promotion_check_arena

        # Where a project requires it, a newer version is served only once it beats the served one here.
        promotion_check.connect(promotion_check_arena, dispatch_uid="arena.promotion_check")
