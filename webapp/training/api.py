"""REST API for training runs and the ratings export (router mounted by ``webapp/api.py``).

Staff only, as the pages. Overrides of a manual run are validated by the
"Train now" form itself (:class:`~webapp.training.forms.TrainNowForm`), so the
page and the API accept exactly the same values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, Path, Query, Router, Schema, Status
from ninja.errors import ValidationError

from webapp.apikit import ERRORS, MAX_ID, SLUG_PATTERN, api_project

from . import exports, selectors, services
from .forms import TrainNowForm
from .models import TrainingRun

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

    lr: float | None = Field(None, description=TrainNowForm.base_fields["lr"].help_text)
    kl_coef: float | None = Field(None, description=TrainNowForm.base_fields["kl_coef"].help_text)
    epochs: int | None = Field(None, description=TrainNowForm.base_fields["epochs"].help_text)


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
