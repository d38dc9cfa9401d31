from django.apps import AppConfig


class PoliciesConfig(AppConfig):
    name = "webapp.policies"
    verbose_name = "Projects and model versions"
