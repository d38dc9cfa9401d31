"""Forms over the policies models: a new project (the "New project" page and ``POST /api/v1/projects``),
a member by username (the setup page's members form and ``…/members`` of the API), and the helpers the
apps' project settings forms share."""

from pathlib import Path

from django import forms
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator

from webapp.errors import ApplicationError

from . import selectors
from .models import Membership, Project, RatingMode
from .services import PROJECT_SETUP_FIELDS, model_folder_exists


def formfield_within_model_bounds(model_field, **kwargs):
    """A ModelForm ``formfield_callback``: the model field's form field, with the model's own
    MinValueValidator/MaxValueValidator as its ``min_value``/``max_value``. The number inputs then carry
    the real bounds (``min``/``max``), and a value out of range is refused with the model's bound, not a
    looser one of the field's type (a PositiveIntegerField's form field says "at least 0" where the
    model needs at least 1)."""
    lows = [v.limit_value for v in model_field.validators if isinstance(v, MinValueValidator)]
    highs = [v.limit_value for v in model_field.validators if isinstance(v, MaxValueValidator)]
    if lows:
        kwargs.setdefault("min_value", max(lows))
    if highs:
        kwargs.setdefault("max_value", min(highs))
    return model_field.formfield(**kwargs)


# What the setup page's settings form edits (and a new project sets besides its slug and base model).
SETUP_FIELDS = PROJECT_SETUP_FIELDS


def textarea_lf(text: str) -> str:
    """A textarea's text with the CRLF (or CR) line breaks browsers send turned into LF, as stored."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def local_model_folders() -> list[Path]:
    """Hugging Face model folders (with a ``config.json``) directly under the models folder, by name."""
    root = Path(settings.REWARDLOOP_MODELS_DIR)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.json").exists())


class RubricModeNeedsRubric:
    """Rubric mode needs the project's rubric, which these forms do not edit: refused on the mode field
    (the model's own check names the rubric field, which the forms lack: Django would raise ValueError)."""

    RUBRIC_NEEDED = "Rubric mode needs a rubric: pick another mode, save a rubric on the setup page, then switch."

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("rating_mode") == RatingMode.RUBRIC and not self.instance.rubric:
            self.add_error("rating_mode", self.RUBRIC_NEEDED)
        return cleaned


class ProjectCreateForm(RubricModeNeedsRubric, forms.ModelForm):
    """A new project: its name, base model folder, rating mode and guidelines; in rubric mode its rubric,
    typed on the same page (``rubric``: the criteria of the page's :class:`RubricForm`, checked there)."""

    RUBRIC_NEEDED = "Rubric mode needs a rubric: name at least one criterion."

    class Meta:
        model = Project
        fields = ["slug", "title", "base_model_path", *SETUP_FIELDS[1:]]
        formfield_callback = formfield_within_model_bounds
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 8})}
        help_texts = {
            "base_model_path": "A local Hugging Face causal-LM folder on the server (with config.json); it becomes version 0.",
        }

    def __init__(self, *args, rubric: list[dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.rubric = rubric or []
        folders = local_model_folders()
        if folders and not self.initial.get("base_model_path"):
            self.initial["base_model_path"] = str(folders[0])
        self.fields["base_model_path"].widget.attrs["list"] = "model-folders"
        self.model_folders = folders

    def clean_base_model_path(self):
        path = Path(self.cleaned_data["base_model_path"]).expanduser()
        if not model_folder_exists(path):
            raise forms.ValidationError(f"{path} is not a Hugging Face model folder on the server (no config.json).")
        return str(path.resolve())

    def clean_guidelines(self):
        return textarea_lf(self.cleaned_data["guidelines"])


class MemberAddForm(forms.Form):
    """A username and a role: adds the user, or sets a member's role. The form finds the user (active or
    not: a deactivated member's role can be changed); ``policies.services.membership_add`` decides the rest
    (an inactive newcomer, the last staff member demoted) and the view shows its refusal on this form."""

    username = forms.CharField(label="Username", max_length=150)
    role = forms.ChoiceField(label="Role", choices=Membership.Role.choices, initial=Membership.Role.ANNOTATOR)

    def clean_username(self):
        name = self.cleaned_data["username"].strip()
        try:
            self.user = selectors.user_called(username=name)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message, code="unknown_user") from exc
        return name
