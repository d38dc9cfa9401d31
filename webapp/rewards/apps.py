from django.apps import AppConfig


class RewardsConfig(AppConfig):
    name = "webapp.rewards"
    verbose_name = "Reward models"

    def ready(self):
        from webapp.annotation.signals import completions_stored

        from .signals import score_on_completions_stored

        # New pool completions get the latest reward model's score and uncertainty (the active queue reads them).
        completions_stored.connect(score_on_completions_stored, dispatch_uid="rewards.score_new_completions")
