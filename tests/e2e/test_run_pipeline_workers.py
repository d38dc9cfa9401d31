"""A run's steps across real worker processes: one worker dies between steps, another finishes the run.

Worker A (its own process group and worker name) pauses right after its update
step is committed (``REWARDLOOP_CHAOS_PAUSE=after-update:...``) and is killed
whole with SIGKILL there: nobody is left to send the save step. Worker B, another
process under another name, is started; the real reaper (what beat runs on the
generation queue) finds the silent run between steps and sends the save step
again; B saves, evaluates and promotes from the weights A trained, without
training again.
"""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion, Rating
from webapp.policies.models import ModelVersion
from webapp.training import liveness
from webapp.training import services as training_services
from webapp.training.models import STEP_ORDER, TrainingRun, TrainingStep

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_worker_killed_between_steps_leaves_the_run_to_another_worker_without_redoing_the_update(
    project, make_user, celery_processes, monkeypatch
):
    user = make_user("a")
    annotation_services.completion_pool_refill(project=project, seed=1)
    for completion in Completion.objects.filter(project=project):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 2)

    monkeypatch.setenv("REWARDLOOP_CHAOS_PAUSE", "after-update:300")
    log_a = celery_processes.start(
        "worker-a", "worker", "-Q", "training", "-c", "1", "--purge", "--loglevel", "INFO", "-n", "train-a@%h"
    )
    celery_processes.wait_for_log(log_a, "ready.")
    run = training_services.training_run_create(project=project, trigger="manual")
    celery_processes.wait_until(
        lambda: TrainingStep.objects.filter(run=run, name="update", status="done").exists(), 120, "A's update step"
    )
    run.refresh_from_db()
    curve = run.curve
    assert run.status == "running" and curve
    worker_a = next(proc for name, proc, _ in celery_processes.procs if name == "worker-a")
    os.killpg(worker_a.pid, signal.SIGKILL)  # between steps: A committed the update and sent nothing
    worker_a.wait(10)
    celery_processes.procs = [entry for entry in celery_processes.procs if entry[0] != "worker-a"]  # gone on purpose

    monkeypatch.delenv("REWARDLOOP_CHAOS_PAUSE")
    log_b = celery_processes.start(
        "worker-b", "worker", "-Q", "training", "-c", "1", "--loglevel", "INFO", "-n", "train-b@%h"
    )
    celery_processes.wait_for_log(log_b, "ready.")
    time.sleep(1)
    assert TrainingStep.objects.get(run=run, name="save").status == "queued"  # nobody has sent it
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - liveness.LOST_AFTER - timedelta(seconds=1))
    assert liveness.training_runs_reap_stale() == 0  # resumed, not failed

    run = celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(pk=run.pk).exclude(status="running").first(), 120, "B to finish the run"
    )
    assert run.status == "succeeded" and run.promoted, f"{run.error}\n{run.log}"
    steps = {s.name: s for s in TrainingStep.objects.filter(run=run)}
    assert [steps[n].status for n in STEP_ORDER] == ["done"] * len(STEP_ORDER)
    assert {n: steps[n].attempts for n in STEP_ORDER} == dict.fromkeys(STEP_ORDER, 1)
    assert all(steps[n].worker.startswith("train-a@") for n in ("batch", "update"))
    assert all(steps[n].worker.startswith("train-b@") for n in ("save", "evaluate", "promote"))
    assert run.curve == curve  # trained once, by A
    ordered = [steps[n] for n in STEP_ORDER]
    gaps = [round((b.started_at - a.finished_at).total_seconds(), 3) for a, b in zip(ordered[2:], ordered[3:])]
    print(f"B's steps (s): {[(s.name, round(s.duration_s, 2)) for s in ordered[2:]]}; between them: {gaps}")
    assert "resumed between steps" in run.log
    project.refresh_from_db()
    assert project.served_version == run.result_version == ModelVersion.objects.get(project=project, number=1)
    assert not liveness.run_work_dir(run).exists()
