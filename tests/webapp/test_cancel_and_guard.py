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

SERVE = {"confirm": "1", "reason": "checked by hand"}  # the versions page's confirmed Serve form


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


# --- The promotion guard cannot be bypassed ------------------------------------------


def during(monkeypatch, module, name, action):
    """Run ``action()`` once, the moment ``module.name`` is first called, then carry on."""
    real, done = getattr(module, name), []

    def wrapped(*args, **kwargs):
        if not done:
            done.append(action())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return done


def test_a_version_under_evaluation_cannot_be_served_and_its_row_says_why(project, make_user, staff_client, monkeypatch):
    rate_pool(project, make_user("a"))
    run = training_services.training_run_create(project=project, trigger="manual")
    url = f"/staff/p/{project.slug}/versions/"

    def staff_tries_to_serve_v1():
        page = staff_client.get(url).content.decode()
        answer = staff_client.post(f"{url}1/promote/", SERVE, follow=True).content.decode()
        project.refresh_from_db()
        return page, answer, project.served_version.number

    seen = during(monkeypatch, evaluation, "version_evaluate", staff_tries_to_serve_v1)
    run = training_services.training_run_execute(run_id=run.pk)

    page, answer, served_then = seen[0]
    assert "being evaluated" in page and 'data-promote="1"' not in page
    assert served_then == 0
    assert f"v1 cannot be served yet: run {run.pk} is still evaluating it" in answer
    assert run.status == "succeeded" and run.promoted  # the guard, not the click, served it


def test_a_held_back_version_is_served_only_with_serve_anyway_and_that_is_audited(
    project, make_user, staff_client, staff_user
):
    from webapp.policies.models import AuditEvent

    project.guard_max_kl = 0.0  # any update at all is "too far": v1 is held back
    project.save(update_fields=["guard_max_kl"])
    rate_pool(project, make_user("a"))
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded" and not run.promoted and "KL to the base" in run.held_back_reason
    url = f"/staff/p/{project.slug}/versions/"
    assert "Serve anyway…" in staff_client.get(url).content.decode()

    refused = staff_client.post(f"{url}1/promote/", SERVE, follow=True).content.decode()
    project.refresh_from_db()
    assert project.served_version.number == 0 and "v1 was held back: KL to the base" in refused

    staff_client.post(f"{url}1/promote/", {**SERVE, "override_guard": "1"})
    project.refresh_from_db()
    assert project.served_version.number == 1
    event = AuditEvent.objects.filter(action="promote").latest("created_at")
    assert event.actor == staff_user and "KL to the base" in event.detail["override_guard"]


def test_a_held_back_version_is_never_left_served(project, make_user, monkeypatch):
    from webapp.policies.models import Project

    project.guard_max_kl = 0.0
    project.save(update_fields=["guard_max_kl"])
    rate_pool(project, make_user("a"))
    run = training_services.training_run_create(project=project, trigger="manual")

    def served_behind_the_guards_back():  # e.g. an old client, an admin edit, a direct SQL update
        v1 = ModelVersion.objects.get(project=project, number=1)
        Project.objects.filter(pk=project.pk).update(served_version=v1)

    during(monkeypatch, evaluation, "guard_reasons", served_behind_the_guards_back)
    run = training_services.training_run_execute(run_id=run.pk)

    assert run.status == "succeeded" and not run.promoted and run.held_back_reason
    project.refresh_from_db()
    assert project.served_version.number == 0  # the parent is served again
    assert ModelVersion.objects.get(pk=run.result_version_id).held_back_reason
