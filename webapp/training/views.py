"""Staff pages for training runs. Every view is staff-only (403 for annotators)."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError
from webapp.permissions import staff_required
from webapp.policies.models import Project

from . import selectors, services
from .models import TrainingRun


@staff_required
@require_GET
def runs(request, slug):
    """The project's runs (``training/runs.html``); htmx polls the ``table`` partial while one is active."""
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    context = {
        "project": project,
        "runs": selectors.runs_for_project(project=project),
        "overview": selectors.training_overview(project=project),
    }
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "training/runs.html#table", context)
    return render(request, "training/runs.html", context)


@staff_required
@require_GET
def run_detail(request, slug, run_id):
    """One run: status, progress, metrics, log and error (``training/run_detail.html``)."""
    project = get_object_or_404(Project, slug=slug)
    run = get_object_or_404(
        TrainingRun.objects.select_related("parent_version", "result_version"), pk=run_id, project=project
    )
    context = {"project": project, "run": run, "metrics": sorted(run.metrics.items())}
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "training/run_detail.html#status", context)
    return render(request, "training/run_detail.html", context)


@staff_required
@require_POST
def train_now(request, slug):
    """Queue a manual training run on the unused ratings; errors come back as messages."""
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    try:
        run = services.training_run_create(project=project, trigger=TrainingRun.Trigger.MANUAL, user=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("training:runs", slug=slug)
    messages.success(request, f"Training run {run.pk} queued.")
    return redirect("training:run_detail", slug=slug, run_id=run.pk)
