from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "webapp.training"
    verbose_name = "Training"

    def ready(self):
        from webapp.policies.signals import version_served_committed

        from .signals import version_evaluate_on_served

        # A served version never measured (a rollback) is measured while annotators rate it.
        version_served_committed.connect(version_evaluate_on_served, dispatch_uid="training.evaluate_on_served")
