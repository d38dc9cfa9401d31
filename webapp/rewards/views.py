"""Staff pages for reward models. Staff-only (403 for annotators); changes are POST."""

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.permissions import staff_required

from . import selectors, services, tasks

METRIC_COLUMNS = [
    ("held_out/pearson", "Pearson"),
    ("held_out/spearman", "Spearman"),
    ("held_out/pairwise_accuracy", "Pairwise acc."),
    ("held_out/comparison_accuracy", "Comparison acc."),
    ("held_out/mean_uncertainty", "Mean uncertainty"),
    ("fit/seconds", "Fit s"),
]


@staff_required
@require_GET
def reward_models(request, slug):
    """The project's reward-model versions (``rewards/reward_models.html``): ratings fitted on,
    held-out metrics and calibration, and a "Fit now" button."""
    project = request.project
    versions = list(selectors.reward_model_versions(project=project))
    rows = [
        {
            "version": v,
            "metrics": [v.metrics.get(key) for key, _label in METRIC_COLUMNS],
            "held_out": (v.metrics.get("held_out/n_ratings", 0), v.metrics.get("held_out/n_pairs", 0)),
            "calibration": v.metrics.get("held_out/calibration", []),
        }
        for v in versions
    ]
    context = {
        "project": project,
        "rows": rows,
        "columns": [label for _key, label in METRIC_COLUMNS],
        "judgments": selectors.judgment_count(project=project),
        "min_judgments": services.min_judgments(),
    }
    return render(request, "rewards/reward_models.html", context)


@staff_required
@require_POST
def fit_now(request, slug):
    """Queue a reward-model fit on the training queue; with too few judgments, say so and queue nothing."""
    project = request.project
    judgments, needed = selectors.judgment_count(project=project), services.min_judgments()
    if judgments < needed:
        messages.error(
            request,
            f"Too few ratings to fit a reward model: {judgments} judgments, at least {needed} are needed. "
            "Training goes on from human ratings alone.",
        )
    else:
        tasks.reward_model_fit.delay_on_commit(project.pk)
        messages.success(request, f"Reward-model fit queued on {judgments} judgments; reload this page to see it.")
    return redirect("rewards:reward_models", slug=project.slug)
