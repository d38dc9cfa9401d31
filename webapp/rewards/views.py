"""Staff pages for reward models. Staff-only (403 for annotators); changes are POST."""

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.permissions import staff_required
from webapp.policies import services as policy_services
from webapp.policies.models import Project
from webapp.policies.views import project_settings_form_save

from . import selectors, services, tasks
from .forms import RewardSettingsForm

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
    held-out metrics and calibration, a "Fit now" button and the reward settings form."""
    return render(request, "rewards/reward_models.html", _context(request.project))


def _context(project, *, settings_form=None) -> dict:
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
        "settings_form": settings_form or RewardSettingsForm(instance=project),
        "served_by_reason": selectors.served_by_reason(project=project),
    }
    return context


@staff_required
@require_POST
def settings_update(request, slug):
    """Save the reward source, the reward model's sampling and pessimism, and the active queue; audited.
    An invalid form comes back (400) with each error next to its field and nothing saved."""
    project = request.project
    form = RewardSettingsForm(request.POST, instance=Project.objects.get(pk=project.pk))
    refused = project_settings_form_save(
        request, form, project=project, update=policy_services.project_reward_settings_update,
        fields=form.Meta.fields, saved="Reward settings saved.",
        invalid_page=lambda form: render(request, "rewards/reward_models.html", _context(project, settings_form=form),
                                         status=400),
    )
    return refused or redirect("rewards:reward_models", slug=project.slug)


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
