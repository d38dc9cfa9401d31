"""A training run is a pipeline of steps: each runs once, can be picked up by another worker, and is shown.

Real pgcore on the tiny model, real weights on disk, the real database and the
configured broker (the filesystem queue, or Redis). Steps are run here the way a
worker's task runs them (``training_step_run`` with a worker name), one at a
time, so a crash between two steps is simply the next step never being run by
the first worker. The same with real worker processes killed between steps is in
tests/e2e/test_run_pipeline_workers.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.webapp.broker_helpers import queued_messages
from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion, Rating
from webapp.policies.models import ModelVersion
from webapp.policies.runtime import version_dir
from webapp.training import liveness
from webapp.training import services as training_services
from webapp.training.models import STEP_ORDER, TrainingRun, TrainingStep

HTMX = {"HTTP_HX_REQUEST": "true"}
WORKER_A, WORKER_B = "train-a@box:101", "train-b@other:202"


def rate_pool(project, user):
    annotation_services.completion_pool_refill(project=project, seed=1)
    for completion in Completion.objects.filter(project=project, ratings__isnull=True):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 2)


def steps_of(run) -> dict[str, TrainingStep]:
    return {s.name: s for s in TrainingStep.objects.filter(run=run)}


def run_steps(run, names, worker):
    """Run ``names`` in order as ``worker`` would (no messages); returns what the last one says comes next."""
    following = None
    for name in names:
        following = training_services.training_step_run(run_id=run.pk, step=name, worker=worker, chain=False)
    return following


@pytest.fixture
def rated_run(project, make_user):
    rate_pool(project, make_user("a"))
    return training_services.training_run_create(project=project, trigger="manual")


def test_a_new_run_has_every_step_queued_in_order(rated_run):
    assert [(s.name, s.status, s.attempts) for s in TrainingStep.objects.filter(run=rated_run)] == [
        (name, "queued", 0) for name in STEP_ORDER
    ]
    assert STEP_ORDER == ["batch", "update", "save", "evaluate", "promote"]


def test_a_run_records_each_step_done_with_its_worker_and_times(rated_run):
    assert run_steps(rated_run, STEP_ORDER, WORKER_A) is None
    rated_run.refresh_from_db()
    assert rated_run.status == "succeeded" and rated_run.promoted, rated_run.log
    for step in steps_of(rated_run).values():
        assert (step.status, step.attempts, step.worker) == ("done", 1, WORKER_A), step.name
        assert step.started_at <= step.finished_at
    assert not liveness.run_work_dir(rated_run).exists()  # the working folder goes when the run ends
    assert version_dir(rated_run.result_version).is_dir()


def test_a_step_delivered_again_after_it_finished_is_a_no_op_that_moves_on(rated_run):
    assert run_steps(rated_run, ["batch", "update"], WORKER_A) == "save"
    rated_run.refresh_from_db()
    curve, log = rated_run.curve, rated_run.log
    trained = liveness.run_work_dir(rated_run) / "policy"
    written_at = trained.stat().st_mtime_ns

    # The update's message comes again (redelivered, or retried after a crash of its worker's host).
    queued_messages("training")
    again = training_services.training_step_run(run_id=rated_run.pk, step="update", worker=WORKER_B)

    assert again == "save"  # it moves on...
    assert queued_messages("training") == [("webapp.training.tasks.training_step", [rated_run.pk, "save"])]
    update = steps_of(rated_run)["update"]
    assert (update.status, update.attempts, update.worker) == ("done", 1, WORKER_A)  # ...without training again
    rated_run.refresh_from_db()
    assert rated_run.curve == curve and rated_run.log == log
    assert trained.stat().st_mtime_ns == written_at

    assert run_steps(rated_run, ["save", "evaluate", "promote"], WORKER_A) is None
    # Every message of the finished run delivered again: nothing more happens.
    for name in STEP_ORDER:
        assert training_services.training_step_run(run_id=rated_run.pk, step=name, worker=WORKER_B) is None
    assert queued_messages("training") == []
    assert ModelVersion.objects.filter(project=rated_run.project).count() == 2
    assert {s.attempts for s in steps_of(rated_run).values()} == {1}


def test_a_step_is_not_started_before_the_steps_before_it_are_done(rated_run):
    assert training_services.training_step_run(run_id=rated_run.pk, step="update", worker=WORKER_A) is None
    rated_run.refresh_from_db()
    assert rated_run.status == "queued" and steps_of(rated_run)["update"].attempts == 0
    with pytest.raises(ValueError, match="unknown training step"):
        training_services.training_step_run(run_id=rated_run.pk, step="deploy")


def test_a_crash_between_steps_resumes_at_the_next_step_on_another_worker_without_redoing_the_update(rated_run):
    # Worker A builds the batch and trains, then its machine is gone before the save step runs anywhere.
    run_steps(rated_run, ["batch", "update"], WORKER_A)
    rated_run.refresh_from_db()
    curve = rated_run.curve
    silent = timezone.now() - liveness.LOST_AFTER - timedelta(seconds=1)
    TrainingRun.objects.filter(pk=rated_run.pk).update(heartbeat_at=silent)
    queued_messages("training")

    assert liveness.training_runs_reap_stale() == 0  # not failed: resumed

    assert queued_messages("training") == [("webapp.training.tasks.training_step", [rated_run.pk, "save"])]
    rated_run.refresh_from_db()
    assert rated_run.status == "running" and "resumed between steps" in rated_run.log
    assert liveness.training_runs_reap_stale() == 0 and queued_messages("training") == []  # not again at once
    # Worker B takes the message and finishes the run from the trained weights A left.
    assert run_steps(rated_run, ["save", "evaluate", "promote"], WORKER_B) is None
    rated_run.refresh_from_db()
    assert rated_run.status == "succeeded" and rated_run.promoted, rated_run.log
    steps = steps_of(rated_run)
    assert [(steps[n].worker, steps[n].attempts) for n in STEP_ORDER] == [(WORKER_A, 1)] * 2 + [(WORKER_B, 1)] * 3
    assert rated_run.curve == curve  # the update ran once
    assert rated_run.result_version.number == 1 and rated_run.result_version.ratings_used == rated_run.ratings.count()


def test_a_restarted_worker_resumes_a_run_it_left_between_steps(rated_run):
    run_steps(rated_run, ["batch", "update"], WORKER_A)
    queued_messages("training")
    assert liveness.training_runs_fail_of_worker(hostname="train-a@box") == 0
    rated_run.refresh_from_db()
    assert rated_run.status == "running"
    assert queued_messages("training") == [("webapp.training.tasks.training_step", [rated_run.pk, "save"])]


def test_a_worker_lost_inside_a_step_fails_the_run_and_skips_the_steps_after_it(rated_run):
    run_steps(rated_run, ["batch"], WORKER_A)
    TrainingStep.objects.filter(run=rated_run, name="update").update(status="running", attempts=1, worker=WORKER_A)
    TrainingRun.objects.filter(pk=rated_run.pk).update(stage="updating")

    run = liveness.training_step_lost(run_id=rated_run.pk, step="update", reason="its worker process died (signal 9)")

    assert run.status == "failed" and "lost while updating the policy" in run.error
    steps = steps_of(run)
    assert [steps[n].status for n in STEP_ORDER] == ["done", "failed", "skipped", "skipped", "skipped"]
    assert "signal 9" in steps["update"].error
    assert not liveness.run_work_dir(run).exists()


def test_a_worker_lost_after_its_step_finished_resumes_the_run(rated_run):
    run_steps(rated_run, ["batch"], WORKER_A)
    queued_messages("training")
    assert liveness.training_step_lost(run_id=rated_run.pk, step="batch", reason="its worker process died") is None
    rated_run.refresh_from_db()
    assert rated_run.status == "running"
    assert queued_messages("training") == [("webapp.training.tasks.training_step", [rated_run.pk, "update"])]
    # Died with the next step's message in hand, before claiming it: resumed too, not failed.
    assert liveness.training_step_lost(run_id=rated_run.pk, step="update", reason="its worker process died") is None
    rated_run.refresh_from_db()
    assert rated_run.status == "running"
    assert queued_messages("training") == [("webapp.training.tasks.training_step", [rated_run.pk, "update"])]


def test_a_cancel_between_steps_ends_the_run_at_once_and_the_next_step_does_nothing(rated_run, staff_user, models_dir):
    run_steps(rated_run, ["batch", "update"], WORKER_A)
    assert liveness.run_work_dir(rated_run).exists()

    run = training_services.training_run_cancel(run=rated_run, user=staff_user)

    assert run.status == "cancelled" and run.finished_at and run.result_version is None
    steps = steps_of(run)
    assert [steps[n].status for n in STEP_ORDER] == ["done", "done", "skipped", "skipped", "skipped"]
    assert "cancelled between steps by boss; no version written" in run.log
    assert not list(Path(models_dir).glob(f"{run.project.slug}/*"))  # nothing left on disk
    assert training_services.training_step_run(run_id=run.pk, step="save", worker=WORKER_B) is None
    assert ModelVersion.objects.filter(project=run.project).count() == 1
    run.project.refresh_from_db()
    assert run.project.served_version.number == 0


def test_a_cancel_after_the_save_keeps_the_version_unserved(rated_run, staff_user):
    run_steps(rated_run, ["batch", "update", "save"], WORKER_A)
    run = training_services.training_run_cancel(run=rated_run, user=staff_user)
    assert run.status == "cancelled" and run.result_version is not None
    version = ModelVersion.objects.get(pk=run.result_version_id)
    assert version.held_back_reason == f"Not served: run {run.pk} was cancelled by boss before promotion."
    assert version_dir(version).is_dir()  # a registered version keeps its weights


def test_a_cancel_asked_during_a_step_is_honoured_when_it_ends(rated_run, staff_user, monkeypatch):
    from webapp.training import pipeline

    real = pipeline.step_save

    def save_while_staff_cancels(**kwargs):
        real(**kwargs)
        training_services.training_run_cancel(run=TrainingRun.objects.get(pk=rated_run.pk), user=staff_user)

    monkeypatch.setattr(training_services, "STEP_BODIES", {**training_services.STEP_BODIES, "save": save_while_staff_cancels})
    run_steps(rated_run, ["batch", "update"], WORKER_A)
    assert run_steps(rated_run, ["save"], WORKER_A) is None
    rated_run.refresh_from_db()
    assert rated_run.status == "cancelled"  # asked (a step was running), then ended as the step finished
    steps = steps_of(rated_run)
    assert [steps[n].status for n in STEP_ORDER] == ["done", "done", "done", "skipped", "skipped"]
    assert "stopped after the save step, before evaluate" in rated_run.log


def test_a_step_that_fails_is_recorded_with_its_error_and_the_run_fails(project, make_user):
    rate_pool(project, make_user("a"))
    Completion.objects.filter(pk=Completion.objects.first().pk).update(token_ids=[10**9])  # the forward pass fails
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "failed"
    steps = steps_of(run)
    assert [steps[n].status for n in STEP_ORDER] == ["done", "failed", "skipped", "skipped", "skipped"]
    assert steps["update"].error == run.error


def test_the_run_page_lists_the_steps_and_the_status_poll_updates_them(rated_run, staff_client):
    run_steps(rated_run, ["batch"], WORKER_A)
    TrainingStep.objects.filter(run=rated_run, name="update").update(
        status="running", attempts=1, worker=WORKER_A, started_at=timezone.now()
    )
    url = f"/staff/p/{rated_run.project.slug}/runs/{rated_run.pk}/"
    page = staff_client.get(url).content.decode()
    assert 'id="run-steps"' in page
    assert 'data-step="batch" data-step-status="done"' in page
    assert 'data-step="update" data-step-status="running"' in page and "since " in page
    assert 'data-step="promote" data-step-status="queued"' in page
    assert "Build the batch" in page and WORKER_A in page

    TrainingStep.objects.filter(run=rated_run, name="update").update(status="queued", attempts=0)
    run_steps(rated_run, STEP_ORDER[1:], WORKER_A)
    poll = staff_client.get(f"{url}status/", **HTMX).content.decode()
    assert poll.count('data-step-status="done"') == len(STEP_ORDER)
    update = steps_of(rated_run)["update"]
    assert f"{update.duration_s:.1f} s" in poll


def test_the_admin_shows_a_runs_steps_read_only(rated_run, client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-12345678"))
    page = client.get(f"/admin/training/trainingrun/{rated_run.pk}/change/").content.decode()
    assert "build the batch" in page and "promotion guard" in page
    assert 'name="steps-0-status"' not in page  # shown, not editable


def test_serving_a_version_never_evaluated_queues_its_evaluation_and_the_run_finds_its_parent_measured(
    rated_run, make_user, monkeypatch
):
    from webapp.annotation.importers import PromptRow
    from webapp.policies import services as policy_services
    from webapp.training import evaluation, tasks
    from webapp.training.signals import version_evaluate_send

    project = rated_run.project
    annotation_services.prompts_create(
        project=project, rows=[PromptRow(line=1, text="Held-out review: the plot", held_out=True)]
    )
    v0 = project.served_version
    queued_messages("training")
    assert version_evaluate_send(project_id=project.pk)  # what bootstrap_demo and a serve of v0 send
    assert queued_messages("training") == [("webapp.training.tasks.version_samples_ensure", [v0.pk])]
    tasks.version_samples_ensure(v0.pk)  # the worker runs it
    v0.refresh_from_db()
    assert v0.evaluated_at is not None and v0.kl_to_base == 0.0  # the base is its own reference

    seen = []
    real = evaluation.version_evaluate

    def recorded(*, version, policy=None, **kwargs):
        seen.append(version.number)
        return real(version=version, policy=policy, **kwargs)

    monkeypatch.setattr(evaluation, "version_evaluate", recorded)
    run_steps(rated_run, STEP_ORDER, WORKER_A)
    assert seen == [1]  # only the new version: its parent was measured while it was served
    assert queued_messages("training") == []  # v1 was measured by its run: nothing more to send
    v1 = ModelVersion.objects.get(project=project, number=1)
    policy_services.version_promote(version=v0, user=make_user("boss", staff=True))
    assert queued_messages("training") == []  # v0 is measured already
    assert not version_evaluate_send(project_id=project.pk)
    assert v1.evaluated_at is not None


def test_the_evaluate_step_in_the_trainers_process_takes_the_trained_policy_instead_of_loading_it(
    rated_run, monkeypatch
):
    from webapp.policies import runtime

    loaded = []
    real = runtime.policy_load
    monkeypatch.setattr(runtime, "policy_load", lambda version, **kw: loaded.append(version.number) or real(version, **kw))
    run_steps(rated_run, ["batch", "update", "save", "evaluate"], WORKER_A)
    assert 1 not in loaded and loaded[0] == 0  # the parent (to train, and to measure it); v1 came from memory
    loaded.clear()
    other = TrainingRun.objects.get(pk=rated_run.pk)
    assert training_services.training_step_run(run_id=other.pk, step="promote", worker=WORKER_A, chain=False) is None
    from webapp.training import pipeline

    assert pipeline._trained == {}  # the slot is emptied once taken


def test_the_promote_step_samples_nothing_and_the_older_leftovers_stay_offered_until_the_refill(
    rated_run, make_user, make_completion
):
    """Serving is not delayed by sampling: the training worker generates nothing for the pool; the
    refill it asks for runs on the generation queue, and until its first batch lands the queue
    offers the parent's unrated leftovers instead of nothing."""
    project = rated_run.project
    leftover = make_completion(project, text="an unrated item of v0")

    assert run_steps(rated_run, STEP_ORDER, WORKER_A) is None

    rated_run.refresh_from_db()
    project.refresh_from_db()
    assert rated_run.status == "succeeded" and rated_run.promoted, rated_run.log
    assert project.served_version_id == rated_run.result_version_id
    assert not Completion.objects.filter(model_version_id=rated_run.result_version_id).exists()
    lease = annotation_services.lease_next(project=project, annotator=make_user("b"))
    assert lease is not None and lease.completion_id == leftover.pk
