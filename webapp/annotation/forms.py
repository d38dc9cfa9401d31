"""Forms for setting a project up in the browser (and its gold items): validate what staff type before a service sees it."""

from pathlib import Path

from django import forms
from django.conf import settings

from webapp.policies.forms import formfield_within_model_bounds
from webapp.policies.models import RUBRIC_MAX_CRITERIA, Membership, Project, RatingMode
from webapp.policies.services import PROJECT_GOLD_FIELDS, model_folder_exists

from .models import Choice

SETUP_FIELDS = ("title", "rating_mode", "guidelines", "ratings_per_item", "completions_per_prompt", "pool_target")


def _lf(text: str) -> str:
    """A textarea's text with the CRLF (or CR) line breaks browsers send turned into LF, as stored."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def local_model_folders() -> list[Path]:
    """Hugging Face model folders (with a ``config.json``) directly under the models folder, by name."""
    root = Path(settings.REWARDLOOP_MODELS_DIR)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.json").exists())


class _RubricModeNeedsRubric:
    """Rubric mode needs the project's rubric, which these forms do not edit: refused on the mode field
    (the model's own check names the rubric field, which the forms lack: Django would raise ValueError)."""

    RUBRIC_NEEDED = "Rubric mode needs a rubric: pick another mode, save a rubric on the setup page, then switch."

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("rating_mode") == RatingMode.RUBRIC and not self.instance.rubric:
            self.add_error("rating_mode", self.RUBRIC_NEEDED)
        return cleaned


class ProjectCreateForm(_RubricModeNeedsRubric, forms.ModelForm):
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
        return _lf(self.cleaned_data["guidelines"])


class ProjectSettingsForm(_RubricModeNeedsRubric, forms.ModelForm):
    """What annotators see and how items are rated."""

    class Meta:
        model = Project
        fields = list(SETUP_FIELDS)
        formfield_callback = formfield_within_model_bounds
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 10})}

    def clean_guidelines(self):
        """Guidelines as stored (LF), so saving the form unchanged changes (and audits) nothing."""
        return _lf(self.cleaned_data["guidelines"])


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
            raise forms.ValidationError(
                f"No active user is called {name!r}; create the account first (Admin → Users).", code="unknown_user"
            )
        self.user = user
        return name


class GoldItemForm(forms.Form):
    """Add a gold item or change its answer (``services.gold_item_set`` checks the answer against
    the kind of item). Only the fields of the item's kind are shown and filled:

    Likert (and rubric) items ``score`` and ``tolerance``; thumbs ``thumbs``; pairs ``choice`` (the
    pair is named by its completion A); rank groups ``best`` (named by their anchor).
    """

    completion = forms.IntegerField(label="Item #", min_value=1, help_text="The item's number, as in the history and comments (a pair's A, a ranking's first output).")
    score = forms.TypedChoiceField(label="Score", choices=[("", "–")] + [(s, s) for s in range(1, 6)], coerce=int, required=False, empty_value=None)
    tolerance = forms.TypedChoiceField(label="Tolerance (±)", choices=[(t, t) for t in range(0, 5)], coerce=int, required=False, empty_value=None)
    thumbs = forms.ChoiceField(label="Thumb", choices=[("", "–"), ("up", "thumbs up"), ("down", "thumbs down")], required=False)
    choice = forms.ChoiceField(label="Choice", choices=[("", "–")] + [(c.value, c.label) for c in Choice], required=False)
    best = forms.IntegerField(label="Best output #", min_value=1, required=False)
    note = forms.CharField(label="Note", required=False, max_length=2000, help_text="Why this is the answer (staff only).")

    KIND_FIELDS = {"likert": ("score", "tolerance"), "thumbs": ("thumbs",), "pairwise": ("choice",), "ranking": ("best",)}

    def __init__(self, *args, kind: str = "likert", **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind

    def answer_fields(self):
        """The bound fields of this form's kind (what the template shows)."""
        return [self[name] for name in self.KIND_FIELDS[self.kind]]

    def answer(self) -> dict:
        """The answer typed, as ``gold_answer_clean`` reads it (fields left blank are left out)."""
        data = self.cleaned_data
        answer = {}
        if data.get("score") is not None:
            answer["score"] = data["score"]
            if data.get("tolerance") is not None:
                answer["tolerance"] = data["tolerance"]
        if data.get("thumbs"):
            answer["thumbs_up"] = data["thumbs"] == "up"
        if data.get("choice"):
            answer["choice"] = data["choice"]
        if data.get("best") is not None:
            answer["best"] = data["best"]
        return answer


class GoldSettingsForm(forms.ModelForm):
    """The project's gold checks (figures page): the gold item rate and the accuracy rule of training weights."""

    class Meta:
        model = Project
        fields = list(PROJECT_GOLD_FIELDS)
        formfield_callback = formfield_within_model_bounds


class RubricForm(forms.Form):
    """The rubric editor: up to ``RUBRIC_MAX_CRITERIA`` rows of name, weight and description. Rows
    with no name are left out; ``policies.services.project_rubric_update`` checks the rest (unique
    names, weights from 0.01 to 1000)."""

    def __init__(self, *args, rubric: list[dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        rubric = rubric or []
        self.n_rows = min(RUBRIC_MAX_CRITERIA, max(len(rubric) + 2, 3))
        for i in range(RUBRIC_MAX_CRITERIA):
            criterion = rubric[i] if i < len(rubric) else {}
            n = i + 1
            self.fields[f"name_{i}"] = forms.CharField(
                label=f"Criterion {n}", max_length=60, required=False, initial=criterion.get("name", ""),
                widget=forms.TextInput(attrs={"aria-label": f"Criterion {n} name"}),
            )
            self.fields[f"weight_{i}"] = forms.FloatField(
                label=f"Criterion {n} weight", required=False, initial=criterion.get("weight", 1.0),
                widget=forms.NumberInput(attrs={"aria-label": f"Criterion {n} weight", "step": "any"}),
            )
            self.fields[f"description_{i}"] = forms.CharField(
                label=f"Criterion {n} description", max_length=500, required=False, initial=criterion.get("description", ""),
                widget=forms.TextInput(attrs={"aria-label": f"Criterion {n} description"}),
            )

    def rows(self):
        """``(name, weight, description)`` bound fields of the rows to show (the filled ones and a few blank)."""
        shown = self.n_rows
        if self.is_bound:  # re-shown after an error: every row that was filled in, and one more
            filled = [i for i in range(RUBRIC_MAX_CRITERIA) if self.data.get(f"name_{i}", "").strip()]
            shown = min(RUBRIC_MAX_CRITERIA, max(shown, (filled[-1] + 2) if filled else 0))
        return [(self[f"name_{i}"], self[f"weight_{i}"], self[f"description_{i}"]) for i in range(shown)]

    def rubric(self) -> list[dict]:
        """The criteria typed, in order (a row without a name is left out; a missing weight is 1)."""
        data = self.cleaned_data
        out = []
        for i in range(RUBRIC_MAX_CRITERIA):
            name = (data.get(f"name_{i}") or "").strip()
            if name:
                weight = data.get(f"weight_{i}")
                out.append({"name": name, "weight": 1.0 if weight is None else weight, "description": data.get(f"description_{i}") or ""})
        return out
