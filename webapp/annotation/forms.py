"""Forms for setting a project up in the browser (and its gold items): validate what staff type before a service sees it."""

from pathlib import Path

from django import forms

from webapp.policies.forms import SETUP_FIELDS, RubricModeNeedsRubric, formfield_within_model_bounds, textarea_lf
from webapp.policies.models import RUBRIC_MAX_CRITERIA, Project
from webapp.policies.services import PROJECT_GOLD_FIELDS

from .models import Choice


class ProjectSettingsForm(RubricModeNeedsRubric, forms.ModelForm):
    """What annotators see and how items are rated."""

    class Meta:
        model = Project
        fields = list(SETUP_FIELDS)
        formfield_callback = formfield_within_model_bounds
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 10})}

    def clean_guidelines(self):
        """Guidelines as stored (LF), so saving the form unchanged changes (and audits) nothing."""
        return textarea_lf(self.cleaned_data["guidelines"])


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
