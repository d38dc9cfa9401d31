"""Forms for the reward-model page: validate what staff type before a service sees it."""

from django import forms

from webapp.policies.models import Project
from webapp.policies.services import PROJECT_REWARD_FIELDS


class RewardSettingsForm(forms.ModelForm):
    """Where the project's rewards come from (human ratings / reward model) and how its queue chooses items."""

    class Meta:
        model = Project
        fields = list(PROJECT_REWARD_FIELDS)
        widgets = {"reward_source": forms.RadioSelect}
