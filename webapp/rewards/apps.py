from django.apps import AppConfig


class RewardsConfig(AppConfig):
    name = "webapp.rewards"
    verbose_name = "Reward models"
