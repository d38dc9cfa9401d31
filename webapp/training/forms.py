"""Forms for the training pages: validate what staff type before a service sees it."""

from django import forms

from webapp.policies.forms import formfield_within_model_bounds
from webapp.policies.models import Project
from webapp.policies.services import PROJECT_TRAINING_FIELDS


class TrainNowForm(forms.Form):
    """Optional per-run overrides; empty fields keep the project's settings."""

    lr = forms.FloatField(
        label="Learning rate",
        required=False,
        min_value=1e-7,
        max_value=1.0,
        help_text="AdamW step size, between 1e-7 and 1 (e.g. 0.0001).",
        error_messages={"invalid": "Enter the learning rate as a number, e.g. 0.0001."},
    )
    kl_coef = forms.FloatField(
        label="KL coefficient",
        required=False,
        min_value=0.0,
        max_value=10.0,
        help_text="Penalty on drifting from the base model, between 0 and 10.",
        error_messages={"invalid": "Enter the KL coefficient as a number, e.g. 0.05."},
    )
    epochs = forms.IntegerField(
        label="Epochs",
        required=False,
        min_value=1,
        max_value=20,
        help_text="Passes over the new ratings, 1 to 20.",
        error_messages={"invalid": "Enter the epochs as a whole number from 1 to 20."},
    )

    def overrides(self) -> dict:
        """The filled-in fields as a PGConfig override dict (call after ``is_valid()``)."""
        return {k: v for k, v in self.cleaned_data.items() if v is not None}


class TrainingSettingsForm(forms.ModelForm):
    """The schedule threshold and the promotion guard's thresholds of a project."""

    class Meta:
        model = Project
        fields = list(PROJECT_TRAINING_FIELDS)
        formfield_callback = formfield_within_model_bounds
