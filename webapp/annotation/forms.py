"""Forms for setting a project up in the browser: validate what staff type before a service sees it."""

from pathlib import Path

from django import forms
from django.conf import settings

from webapp.policies.models import Membership, Project

SETUP_FIELDS = ("title", "rating_mode", "guidelines", "ratings_per_item", "completions_per_prompt", "pool_target")


def local_model_folders() -> list[Path]:
    """Hugging Face model folders (with a ``config.json``) directly under the models folder, by name."""
    root = Path(settings.REWARDLOOP_MODELS_DIR)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.json").exists())


class ProjectCreateForm(forms.ModelForm):
    """A new project: its name, base model folder, rating mode and guidelines."""

    class Meta:
        model = Project
        fields = ["slug", "title", "base_model_path", *SETUP_FIELDS[1:]]
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 8})}
        help_texts = {
            "base_model_path": "A local Hugging Face causal-LM folder on the server (with config.json); it becomes version 0.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        folders = local_model_folders()
        if folders and not self.initial.get("base_model_path"):
            self.initial["base_model_path"] = str(folders[0])
        self.fields["base_model_path"].widget.attrs["list"] = "model-folders"
        self.model_folders = folders

    def clean_base_model_path(self):
        path = Path(self.cleaned_data["base_model_path"]).expanduser()
        if not (path / "config.json").exists():
            raise forms.ValidationError(f"{path} is not a Hugging Face model folder on the server (no config.json).")
        return str(path.resolve())


class ProjectSettingsForm(forms.ModelForm):
    """What annotators see and how items are rated."""

    class Meta:
        model = Project
        fields = list(SETUP_FIELDS)
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 10})}


class PromptFileForm(forms.Form):
    file = forms.FileField(
        label="Prompt file",
        help_text="JSONL (one {\"text\": …, \"held_out\": false} per line) or CSV with a text column; checked whole before anything is stored.",
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if Path(upload.name).suffix.lower() not in {".jsonl", ".json", ".ndjson", ".csv"}:
            raise forms.ValidationError("Upload a .jsonl or .csv file.")
        return upload


class MemberAddForm(forms.Form):
    username = forms.CharField(label="Username", max_length=150)
    role = forms.ChoiceField(label="Role", choices=Membership.Role.choices, initial=Membership.Role.ANNOTATOR)

    def clean_username(self):
        from django.contrib.auth import get_user_model

        name = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=name, is_active=True).first()
        if user is None:
            raise forms.ValidationError(f"No active user is called {name!r}; create the account first (Admin → Users).")
        self.user = user
        return name
