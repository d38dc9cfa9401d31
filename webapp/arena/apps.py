from django.apps import AppConfig


class ArenaConfig(AppConfig):
    name = "webapp.arena"
    verbose_name = "Version arena"

    def ready(self):
        from webapp.policies.signals import promotion_check, promotion_wait

        from .selectors import promotion_check_arena, promotion_wait_arena

        # Where a project requires it, a newer version is served only once it beats the served one here.
        promotion_check.connect(promotion_check_arena, dispatch_uid="arena.promotion_check")
        # ... and the run and versions pages say how many votes such a version has, of those it needs.
        promotion_wait.connect(promotion_wait_arena, dispatch_uid="arena.promotion_wait")
