"""Staff pages for training runs. Every view is staff-only (403 for annotators); changes are POST."""

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError
from webapp.permissions import staff_required
from webapp.policies import plotfiles
from webapp.policies import selectors as policy_selectors
from webapp.policies import services as policy_services
from webapp.policies.models import ModelVersion, Project
from webapp.policies.views import project_settings_form_save

from . import exports, selectors, services
from .forms import TrainingSettingsForm, TrainNowForm
from .models import TrainingRun
from .selectors import SAME_VERSION


def _runs_context(project, *, train_form=None, settings_form=None) -> dict:
    return {
        "project": project,
        "runs": selectors.runs_for_project(project=project),
        "overview": selectors.training_overview(project=project),
        "train_form": train_form or TrainNowForm(),
        "settings_form": settings_form or TrainingSettingsForm(instance=project),
    }


def _wants_fragment(request) -> bool:
    """An htmx swap (not a history restore): the only request a partial URL answers with a fragment."""
    return bool(request.htmx) and not request.htmx.history_restore_request


@staff_required
@require_GET
def runs(request, slug):
    """The project's runs (``training/runs.html``) with "Train now" and the training settings;
    while a run is active htmx polls :func:`runs_table`. Always the full page."""
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    return render(request, "training/runs.html", _runs_context(project))


@staff_required
@require_GET
def runs_table(request, slug):
    """The ``table`` partial of ``training/runs.html`` for htmx's poll; any other request is
    redirected to the runs page, so a fragment never stands as a page."""
    if not _wants_fragment(request):
        return redirect("training:runs", slug=slug)
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    return render(request, "training/runs.html#table", _runs_context(project))


def _run_context(slug, run_id) -> dict:
    project = get_object_or_404(Project, slug=slug)
    run = get_object_or_404(
        TrainingRun.objects.select_related(
            "parent_version", "result_version", "requested_by", "cancel_requested_by", "reward_model"
        ),
        pk=run_id,
        project=project,
    )
    curves = plotfiles.plot_ensure(*selectors.run_curves_spec(run), slot=selectors.run_curves_slot(run)) if run.curve else None
    rm_plot = (
        plotfiles.plot_ensure(*selectors.run_rm_vs_human_spec(run), slot=selectors.run_rm_vs_human_slot(run))
        if run.reward_model_id
        else None
    )
    waits = (
        [w for w in policy_selectors.promotion_waits(project=project) if w.version == run.result_version.number]
        if run.result_version_id and not run.is_active
        else []
    )
    served_later = (
        policy_selectors.version_served_since(version=run.result_version, since=run.finished_at)
        if run.held_back_reason and run.result_version_id
        else None
    )
    return {
        "project": project,
        "run": run,
        "served_later": served_later,  # the version this run held back was served since (its audit event)
        "promotion_waits": waits,  # the arena's votes so far / needed, where its version waits for them
        "metrics": sorted(run.metrics.items()),
        "steps": selectors.run_steps(run=run),
        "log_tail": selectors.log_tail(run=run),
        "curves": curves,
        "rm_plot": rm_plot,
        # keep polling a finished run until its plots are drawn
        "poll": run.is_active or any(p is not None and not p.ready for p in (curves, rm_plot)),
    }


@staff_required
@require_GET
def run_detail(request, slug, run_id):
    """One run (``training/run_detail.html``): status, its pipeline steps (status, tries, worker,
    duration), epoch/step progress, loss and KL curves, the log's tail, the error or the guard's reasons; while active htmx polls :func:`run_status`.
    Always the full page."""
    return render(request, "training/run_detail.html", _run_context(slug, run_id))


@staff_required
@require_GET
def run_status(request, slug, run_id):
    """The ``status`` partial of ``training/run_detail.html`` for htmx's poll; any other request
    is redirected to the run's page."""
    if not _wants_fragment(request):
        return redirect("training:run_detail", slug=slug, run_id=run_id)
    return render(request, "training/run_detail.html#status", _run_context(slug, run_id))


@staff_required
@require_GET
def run_rm_vs_human(request, slug, run_id):
    """PNG: reward-model score vs people's rating of the completions the run trained on and of the version
    it produced (drawn by a worker; a placeholder until then). 404 for a run trained on human ratings only."""
    run = get_object_or_404(TrainingRun.objects.select_related("reward_model", "result_version"), pk=run_id, project__slug=slug)
    if run.reward_model_id is None:
        raise Http404("This run trained on human ratings only.")
    return plotfiles.plot_response(
        *selectors.run_rm_vs_human_spec(run), slot=selectors.run_rm_vs_human_slot(run), asked_key=request.GET.get("v", ""))


@staff_required
@require_GET
def run_curves(request, slug, run_id):
    """PNG: the run's loss and KL per optimiser step (drawn by a worker; a placeholder until then)."""
    run = get_object_or_404(TrainingRun, pk=run_id, project__slug=slug)
    return plotfiles.plot_response(*selectors.run_curves_spec(run), slot=selectors.run_curves_slot(run), asked_key=request.GET.get("v", ""))


def _fix_below(what: str, form) -> str:
    """One summary line for an invalid form; each error is shown once, next to its field."""
    labels = [form.fields[name].label or name for name in form.errors if name in form.fields]
    if not labels:
        return f"{what}: see the message below."
    return f"{what}: check {', '.join(labels)} below."


@staff_required
@require_POST
def train_now(request, slug):
    """Queue a manual run on the unused ratings with validated overrides; errors come back as messages."""
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    form = TrainNowForm(request.POST)
    if not form.is_valid():
        messages.error(request, _fix_below("Nothing was queued", form))
        return render(request, "training/runs.html", _runs_context(project, train_form=form), status=400)
    try:
        run = services.training_run_create(
            project=project, trigger=TrainingRun.Trigger.MANUAL, user=request.user, overrides=form.overrides()
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("training:runs", slug=slug)
    if run.dispatched_at is None:
        messages.warning(
            request,
            f"Training run {run.pk} is queued, but the task queue (broker) is unreachable, so no worker has it yet; "
            "the schedule sends it when the broker is back. Cancel it if you do not want it to run later.",
        )
    else:
        messages.success(request, f"Training run {run.pk} queued.")
    return redirect("training:run_detail", slug=slug, run_id=run.pk)


@staff_required
@require_POST
def cancel(request, slug, run_id):
    """Cancel a run: a queued one at once, a running one at its next minibatch; audited."""
    run = get_object_or_404(TrainingRun.objects.select_related("project"), pk=run_id, project__slug=slug)
    try:
        run = services.training_run_cancel(run=run, user=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        if run.status == TrainingRun.Status.CANCELLED:
            messages.success(request, f"Run {run.pk} cancelled.")
        else:
            messages.info(
                request,
                f"Run {run.pk} stops at its next checkpoint (the next minibatch, or before it serves anything); "
                "no version it writes will be served.",
            )
    return redirect("training:run_detail", slug=slug, run_id=run_id)


@staff_required
@require_POST
def settings_update(request, slug):
    """Change the minimum of new ratings per scheduled run and the promotion-guard thresholds; audited."""
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    form = TrainingSettingsForm(request.POST, instance=Project.objects.get(pk=project.pk))
    refused = project_settings_form_save(
        request, form, project=project, update=policy_services.project_training_settings_update,
        fields=form.Meta.fields, saved="Training settings saved.", invalid=_fix_below("Nothing was saved", form),
        invalid_page=lambda form: render(request, "training/runs.html", _runs_context(project, settings_form=form),
                                         status=400),
    )
    return refused or redirect("training:runs", slug=slug)


@staff_required
@require_POST
def compare_start(request, slug):
    """Queue the held-out completions two versions still lack, then show the comparison."""
    project = get_object_or_404(Project, slug=slug)
    numbers = [request.POST.get(key, "") for key in ("a", "b")]
    versions = list(ModelVersion.objects.filter(project=project, number__in=[n for n in numbers if n.isdigit() and len(n) < 10]))
    if {str(v.number) for v in versions} != set(numbers):
        messages.error(request, "Choose two versions of this project to compare.")
        return redirect("policies:versions", slug=slug)
    if numbers[0] == numbers[1]:
        messages.error(request, SAME_VERSION.format(n=numbers[0]))
        return redirect("policies:versions", slug=slug)
    try:
        services.comparison_samples_request(versions=versions)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("policies:versions", slug=slug)
    return redirect(f"{reverse('training:compare', args=[slug])}?a={numbers[0]}&b={numbers[1]}")


def _compare_context(request, slug) -> dict | str:
    """The comparison's context, or why there is none (a message for the person)."""
    project = get_object_or_404(Project, slug=slug)
    try:
        a = get_object_or_404(ModelVersion, project=project, number=int(request.GET.get("a", "")))
        b = get_object_or_404(ModelVersion, project=project, number=int(request.GET.get("b", "")))
    except ValueError:
        return "Choose two versions to compare."
    if a.pk == b.pk:
        return SAME_VERSION.format(n=a.number)
    return {"project": project, "a": a, "b": b, "versions": [a, b], **selectors.comparison(a=a, b=b)}


@staff_required
@require_GET
def compare(request, slug):
    """Two versions side by side on the same held-out prompts (``training/compare.html``), from the
    cached samples; htmx polls :func:`compare_table` until both versions have completed every
    prompt. Always the full page."""
    context = _compare_context(request, slug)
    if isinstance(context, str):
        messages.error(request, context)
        return redirect("policies:versions", slug=slug)
    return render(request, "training/compare.html", context)


@staff_required
@require_GET
def compare_table(request, slug):
    """The ``table`` partial of ``training/compare.html`` for htmx's poll; any other request is
    redirected to the comparison page (same ``a`` and ``b``)."""
    if not _wants_fragment(request):
        query = request.GET.urlencode()
        return redirect(f"{reverse('training:compare', args=[slug])}{'?' + query if query else ''}")
    context = _compare_context(request, slug)
    if isinstance(context, str):
        return HttpResponse(context, status=400)
    return render(request, "training/compare.html#table", context)


@staff_required
@require_POST
def export_ratings(request, slug):
    """Download the project's ratings as TRL-ready JSONL (``format`` = kto, pairs or judgments; ``source`` =
    annotator, production or empty for both); audited."""
    project = get_object_or_404(Project, slug=slug)
    fmt = request.POST.get("format", "")
    source = request.POST.get("source") or None
    try:
        text, _ = exports.ratings_export(project=project, fmt=fmt, user=request.user, refuse_empty=True,
                                         source=source)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("policies:versions", slug=slug)
    response = HttpResponse(text, content_type="application/jsonl; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-{fmt}{"-" + source if source else ""}.jsonl"'
    return response
