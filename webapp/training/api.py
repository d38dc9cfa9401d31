"""REST API for training runs and the ratings export (router mounted by ``webapp/api.py``).

Staff only, as the pages. Overrides of a manual run are validated by the
"Train now" form itself (:class:`~webapp.training.forms.TrainNowForm`), so the
page and the API accept exactly the same values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.db import transaction
from django.forms.models import model_to_dict
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, Path, Query, Router, Schema, Status
from ninja.errors import ValidationError

from webapp.annotation.forms import ProjectSettingsForm
from webapp.apikit import (
    ERRORS, MAX_ID, MAX_NUMBER, SLUG_PATTERN, JsonFloat, JsonInt, api_project, form_errors_raise, form_schemas,
)
from webapp.errors import ApplicationError
from webapp.policies import services as project_services
from webapp.policies.models import ModelVersion, Project
from webapp.rewards import selectors as reward_selectors
from webapp.rewards import services as reward_services

from . import exports, selectors, services
from .forms import TrainingSettingsForm, TrainNowForm
from .models import TrainingRun
from .selectors import SAME_VERSION

router = Router(tags=["training"])

Slug = Path(..., pattern=SLUG_PATTERN)
RunId = Path(..., ge=1, le=MAX_ID)


class RunOut(Schema):
    id: int
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    trigger: str
    requested_by: str | None
    parent_version: int
    result_version: int | None
    promoted: bool
    progress_step: int
    progress_total: int
    progress_epoch: int
    progress_epochs: int
    cancel_requested_at: datetime | None
    held_back_reason: str
    error: str
    config: dict
    metrics: dict
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _run_out(run: TrainingRun) -> dict:
    return {
        "id": run.pk,
        "status": run.status,
        "trigger": run.trigger,
        "requested_by": run.requested_by.username if run.requested_by else None,
        "parent_version": run.parent_version.number,
        "result_version": run.result_version.number if run.result_version else None,
        "promoted": run.promoted,
        "progress_step": run.progress_step,
        "progress_total": run.progress_total,
        "progress_epoch": run.progress_epoch,
        "progress_epochs": run.progress_epochs,
        "cancel_requested_at": run.cancel_requested_at,
        "held_back_reason": run.held_back_reason,
        "error": run.error,
        "config": run.config or {},
        "metrics": run.metrics or {},
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def _run(project, run_id) -> TrainingRun:
    return get_object_or_404(
        TrainingRun.objects.select_related("parent_version", "result_version", "requested_by"),
        pk=run_id,
        project=project,
    )


@router.get("/projects/{slug}/runs", response={200: list[RunOut], **ERRORS}, summary="Training runs (staff)")
def runs(request, slug: str = Slug):
    """The project's latest runs, newest first."""
    project, _ = api_project(request, slug, staff=True)
    return [_run_out(r) for r in selectors.runs_for_project(project=project)]


class TrainIn(Schema):
    # TrainNowForm validates these (run_start); its help texts say the bounds.
    model_config = {"extra": "forbid"}

    lr: JsonFloat | None = Field(None, description=TrainNowForm.base_fields["lr"].help_text)
    kl_coef: JsonFloat | None = Field(None, description=TrainNowForm.base_fields["kl_coef"].help_text)
    epochs: JsonInt | None = Field(None, description=TrainNowForm.base_fields["epochs"].help_text)


@router.post("/projects/{slug}/runs", response={201: RunOut, **ERRORS}, summary="Start a training run (staff)")
def run_start(request, slug: str = Slug, body: TrainIn | None = None):
    """Queue a manual run on the unused ratings ("Train now"), with optional overrides for this run.

    409 ``rejected`` when there are no new ratings or a run is already queued or running.
    """
    project, _ = api_project(request, slug, staff=True)
    data = body.model_dump(exclude_none=True) if body else {}
    form = TrainNowForm(data)
    if not form.is_valid():
        raise ValidationError(
            [{"loc": ("body", name), "msg": " ".join(errors)} for name, errors in form.errors.items()]
        )
    project.refresh_from_db()
    run = services.training_run_create(
        project=project, trigger=TrainingRun.Trigger.MANUAL, user=request.user, overrides=form.overrides()
    )
    return Status(201, _run_out(_run(project, run.pk)))


@router.get("/projects/{slug}/runs/{run_id}", response={200: RunOut, **ERRORS}, summary="A run's status")
def run_status(request, slug: str = Slug, run_id: int = RunId):
    project, _ = api_project(request, slug, staff=True)
    return _run_out(_run(project, run_id))


class LogOut(Schema):
    run: int
    status: str
    log: str = Field(description="The run's log (its last 20,000 characters), one line per event.")


@router.get("/projects/{slug}/runs/{run_id}/log", response={200: LogOut, **ERRORS}, summary="A run's log")
def run_log(request, slug: str = Slug, run_id: int = RunId):
    project, _ = api_project(request, slug, staff=True)
    run = _run(project, run_id)
    return {"run": run.pk, "status": run.status, "log": run.log}


@router.post("/projects/{slug}/runs/{run_id}/cancel", response={200: RunOut, **ERRORS}, summary="Cancel a run")
def run_cancel(request, slug: str = Slug, run_id: int = RunId):
    """Cancel a run: a queued one at once, a running one at its next minibatch (then ``status`` is still
    ``running`` with ``cancel_requested_at`` set); audited. 409 ``rejected`` for a finished run."""
    project, _ = api_project(request, slug, staff=True)
    run = services.training_run_cancel(run=_run(project, run_id), user=request.user)
    return _run_out(_run(project, run.pk))


class ExportQuery(Schema):
    format: Literal[tuple(exports.FORMATS)] = Field(
        description="kto (unpaired labels), pairs (chosen/rejected) or judgments (every judgment in its own mode)."
    )
    source: Literal["annotator", "production"] | None = Field(
        default=None, description="Only annotators' judgments, or only production feedback; all when omitted."
    )


@router.get(
    "/projects/{slug}/ratings/export",
    response={200: None, **ERRORS},
    summary="Export ratings as TRL-ready JSONL (staff)",
    openapi_extra={
        "responses": {
            200: {
                "description": "JSONL, one object per line: kto rows {prompt, completion, label}; "
                "pairs rows {prompt, chosen, rejected}. X-Rewardloop-Rows gives the count.",
                "content": {"application/jsonl": {"schema": {"type": "string"}}},
            }
        }
    },
)
def ratings_export(request, slug: str = Slug, query: Query[ExportQuery] = None):
    """The project's judgments in the page's export formats (``exports.ratings_export``); audited.
    An empty export is an empty file (200)."""
    project, _ = api_project(request, slug, staff=True)
    text, rows = exports.ratings_export(project=project, fmt=query.format, user=request.user, source=query.source)
    response = HttpResponse(text, content_type="application/jsonl; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-{query.format}.jsonl"'
    response["X-Rewardloop-Rows"] = str(rows)
    return response


# --- Comparing two versions (the versions page's "Compare") ---


class VersionsCompareIn(Schema):
    model_config = {"extra": "forbid"}

    a: JsonInt = Field(..., ge=0, le=MAX_NUMBER, description="One version's number.")
    b: JsonInt = Field(..., ge=0, le=MAX_NUMBER, description="The other version's number (not a).")


class VersionsCompareRowOut(Schema):
    prompt_id: int
    prompt: str
    a: str | None = Field(description="Version a's completion of the prompt, or null while it is being generated.")
    b: str | None
    similarity: float | None = Field(description="Share of words the two completions have in common (0–1).")


class VersionsCompareOut(Schema):
    a: int
    b: int
    complete: bool = Field(description="Whether both versions have completed every held-out prompt.")
    n_prompts: int
    rows: list[VersionsCompareRowOut]


def _compared(project, a: int, b: int, *, source: str) -> tuple[ModelVersion, ModelVersion]:
    """The two versions, or a 400 naming ``b`` when it is ``a`` again, 404 for an unknown one."""
    if a == b:
        raise ValidationError([{"loc": (source, "b"), "msg": SAME_VERSION.format(n=a)}])
    return (get_object_or_404(ModelVersion, project=project, number=a),
            get_object_or_404(ModelVersion, project=project, number=b))


def _compare_out(a: ModelVersion, b: ModelVersion) -> dict:
    found = selectors.comparison(a=a, b=b)
    rows = [
        {
            "prompt_id": row["prompt"].pk,
            "prompt": row["prompt"].text,
            "a": row["a"].text if row["a"] else None,
            "b": row["b"].text if row["b"] else None,
            "similarity": row.get("similarity"),
        }
        for row in found["rows"]
    ]
    return {"a": a.number, "b": b.number, "complete": found["complete"], "n_prompts": found["n_prompts"], "rows": rows}


@router.post("/projects/{slug}/compare", response={200: VersionsCompareOut, **ERRORS}, summary="Compare two versions (staff)")
def compare_start(request, body: VersionsCompareIn, slug: str = Slug):
    """Both versions' completions of the held-out prompts, side by side, as the compare page shows them.
    Queues the completions either version still lacks on the training worker (rows with a null side
    until then: poll ``GET`` with the same ``a`` and ``b``). 404 for an unknown version, 400 for a version
    against itself, 409 when the task queue is unreachable (nothing queued)."""
    project, _ = api_project(request, slug, staff=True)
    a, b = _compared(project, body.a, body.b, source="body")
    services.comparison_samples_request(versions=[a, b], retry="send this request again")
    return _compare_out(a, b)


@router.get("/projects/{slug}/compare", response={200: VersionsCompareOut, **ERRORS}, summary="A comparison so far (staff)")
def compare_read(request, slug: str = Slug, a: int = Query(..., ge=0, le=MAX_NUMBER),
                 b: int = Query(..., ge=0, le=MAX_NUMBER)):
    """The comparison of versions ``a`` and ``b`` from the completions stored so far; queues nothing."""
    project, _ = api_project(request, slug, staff=True)
    return _compare_out(*_compared(project, a, b, source="query"))


# --- The reward model (the reward models page) ---


class RewardModelOut(Schema):
    number: int
    n_ratings: int = Field(description="Ratings (rows) it was fitted on.")
    n_judgments: int
    created_at: datetime
    metrics: dict = Field(description="Held-out metrics (held_out/pearson, held_out/pairwise_accuracy, …) "
                                      "and the fit's own figures, as on the reward models page.")


class RewardStatusOut(Schema):
    reward_source: str = Field(description="What policy training learns from: human ratings only, or the "
                                           "reward model's scores of fresh samples as well.")
    judgments: int = Field(description="Judgments a fit would read now.")
    min_judgments: int = Field(description="Judgments needed before the first fit.")
    latest: RewardModelOut | None = Field(description="The newest reward-model version, or null before the first fit.")
    versions: list[RewardModelOut] = Field(description="Every reward-model version, newest first.")


@router.get("/projects/{slug}/reward-model", response={200: RewardStatusOut, **ERRORS},
            summary="The reward model's status (staff)")
def reward_model_status(request, slug: str = Slug):
    """The project's reward-model versions with their held-out metrics, how many judgments a fit
    would read and how many the first fit needs, as the reward models page shows them."""
    project, _ = api_project(request, slug, staff=True)
    versions = [
        {"number": v.number, "n_ratings": v.n_ratings, "n_judgments": v.n_judgments, "created_at": v.created_at,
         "metrics": v.metrics or {}}
        for v in reward_selectors.reward_model_versions(project=project)
    ]
    return {
        "reward_source": project.reward_source,
        "judgments": reward_selectors.judgment_count(project=project),
        "min_judgments": reward_services.min_judgments(),
        "latest": versions[0] if versions else None,
        "versions": versions,
    }


# --- A project's settings (the setup page's settings form and the runs page's training settings) ---

# Each form with the service that saves it, as the pages pair them (each change audited by its service).
SETTINGS_FORMS = (
    (ProjectSettingsForm, project_services.project_setup_update),
    (TrainingSettingsForm, project_services.project_training_settings_update),
)
ProjectSettingsOut, ProjectSettingsPatch = form_schemas("ProjectSettings", *(form for form, _ in SETTINGS_FORMS))


def _settings_out(project) -> dict:
    return model_to_dict(project, fields=list(ProjectSettingsOut.model_fields))


@router.get("/projects/{slug}/settings", response={200: ProjectSettingsOut, **ERRORS}, summary="Project settings (staff)")
def settings_read(request, slug: str = Slug):
    """What the setup page's settings form and the runs page's training settings show: title, rating
    mode, guidelines, ratings per item, completions per prompt, pool size; the schedule threshold, the
    promotion guard's and the arena's settings, the weight of production feedback."""
    project, _ = api_project(request, slug, staff=True)
    return _settings_out(project)


@router.patch("/projects/{slug}/settings", response={200: ProjectSettingsOut, **ERRORS},
              summary="Change project settings (staff)")
def settings_update(request, body: ProjectSettingsPatch, slug: str = Slug):
    """Change any of the settings (fields left out keep their value), validated by the pages' own forms
    and saved by their services, audited as on the pages (one audit line per form whose values changed).
    A value a form refuses (out of range, an unknown mode, rubric mode without a rubric) is a 400 naming
    the field; nothing is saved then."""
    project, _ = api_project(request, slug, staff=True)
    changes = body.model_dump(exclude_unset=True)
    with transaction.atomic():
        current = Project.objects.select_for_update().get(pk=project.pk)
        bound = []
        for form_class, update in SETTINGS_FORMS:
            fields = list(form_class.base_fields)
            if set(fields) & set(changes):
                data = {**model_to_dict(current, fields=fields), **changes}
                bound.append((form_class(data, instance=Project.objects.get(pk=project.pk)), update, fields))
        form_errors_raise(*(form for form, _, _ in bound))
        try:
            for form, update, fields in bound:
                update(project=current, user=request.user, **{k: form.cleaned_data[k] for k in fields})
        except ApplicationError as exc:
            raise ValidationError([{"loc": ("body", "settings"), "msg": exc.message}]) from None
    return _settings_out(Project.objects.get(pk=project.pk))
