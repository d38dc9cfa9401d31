"""Cancel is honoured up to promotion, and the promotion guard cannot be bypassed.

Real pgcore on the tiny model, real weights, the real database. A staff member's
cancel is made to land at a precise moment (during evaluation, just before the
decision) by running the real cancel service from inside the real evaluation.
"""

import pytest

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion, Rating
from webapp.policies.models import ModelVersion
from webapp.training import evaluation
from webapp.training import services as training_services
from webapp.training.models import TrainingRun


def rate_pool(project, user):
    annotation_services.completion_pool_refill(project=project, seed=1)
    for completion in Completion.objects.filter(project=project, ratings__isnull=True):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 2)


def cancel_when(monkeypatch, module, name, staff):
    """Make staff cancel the active run the moment ``module.name`` is called, then let it run."""
    real = getattr(module, name)

    def cancelling(*args, **kwargs):
        run = TrainingRun.objects.get(status="running")
        if run.cancel_requested_at is None:
            training_services.training_run_cancel(run=run, user=staff)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, cancelling)


@pytest.mark.parametrize("moment", ["version_evaluate", "guard_reasons"])
def test_a_cancel_during_evaluation_ends_the_run_cancelled_and_its_version_is_not_served(
    project, make_user, staff_client, staff_user, monkeypatch, moment
):
    rate_pool(project, make_user("a"))
    served = project.served_version
    run = training_services.training_run_create(project=project, trigger="manual")
    cancel_when(monkeypatch, evaluation, moment, staff_user)

    run = training_services.training_run_execute(run_id=run.pk)

    assert run.status == "cancelled", run.log
    assert not run.promoted and run.result_version is not None
    project.refresh_from_db()
    assert project.served_version == served
    version = ModelVersion.objects.get(pk=run.result_version_id)
    assert version.held_back_reason == f"Not served: run {run.pk} was cancelled by boss before promotion."
    assert f"v{version.number} is kept but not served" in run.log
    # The run page and the versions page tell the same story.
    run_page = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert f"v{version.number} was written before the cancel and is kept but not served" in run_page
    versions_page = staff_client.get(f"/staff/p/{project.slug}/versions/").content.decode()
    assert f"Not served: run {run.pk} was cancelled by boss before promotion." in versions_page
