"""A real training worker whose pool process is killed with SIGKILL mid-run.

The worker runs with ``REWARDLOOP_CHAOS_PAUSE`` pointing at a file, so the run
waits at the stage the test names (long enough to aim the kill); the kill
itself is a plain SIGKILL of the process recorded on the run. Each loss must
fail the run within 60 s, say what it was doing, hold back a version it had
registered, leave no weight folders it did not register, and free the project.
"""

import os
import signal
import time
from pathlib import Path

import pytest

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion, Rating
from webapp.policies.models import ModelVersion
from webapp.training import services as training_services
from webapp.training.models import TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LOST_WITHIN_S = 60


def rate_everything(project, user):
    annotation_services.completion_pool_refill(project=project, seed=1)
    for completion in Completion.objects.filter(project=project, ratings__isnull=True):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 2)


def kill_at(celery_processes, run, stage: str) -> float:
    """Wait until ``run`` is in ``stage``, SIGKILL its process, return seconds until the run failed."""
    run = celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(pk=run.pk, stage=stage, status="running").first(), 90, f"stage {stage}"
    )
    pid = int(run.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(pk=run.pk).exclude(status="running").exists(),
        LOST_WITHIN_S + 5,
        f"run {run.pk} to end after its process was killed at {stage}",
    )
    return time.monotonic() - killed


def test_a_killed_training_process_fails_its_run_within_a_minute_at_update_save_and_evaluation(
    project, make_user, models_dir, celery_processes, tmp_path, monkeypatch
):
    pause = tmp_path / "pause"
    monkeypatch.setenv("REWARDLOOP_CHAOS_PAUSE", str(pause))
    worker_log = celery_processes.start(
        "training", "worker", "-Q", "training", "-c", "1", "--purge", "--loglevel", "INFO", "-n", "train-e2e@%h"
    )
    celery_processes.wait_for_log(worker_log, "ready.")
    user = make_user("a")
    served = project.served_version_id
    seconds = {}

    for stage in ("updating", "saving", "evaluating"):
        pause.write_text(f"{stage}:120")
        rate_everything(project, user)
        run = training_services.training_run_create(project=project, trigger="manual")
        seconds[stage] = kill_at(celery_processes, run, stage)
        run.refresh_from_db()

        assert run.status == "failed", run.log
        assert seconds[stage] < LOST_WITHIN_S
        label = TrainingRun.Stage(stage).label
        assert f"The training worker was lost while {label}" in run.error
        assert "SIGKILL" in run.error or "signal 9" in run.error, run.error
        project.refresh_from_db()
        assert project.served_version_id == served  # nothing the dead run wrote is served
        left = sorted(p.name for p in Path(models_dir, project.slug).glob("*")) if Path(models_dir, project.slug).exists() else []
        if stage == "evaluating":
            version = run.result_version
            assert version is not None and "held back" in run.error
            assert f"lost while {label}" in ModelVersion.objects.get(pk=version.pk).held_back_reason
            assert f"run-{run.pk}" in left  # a registered version keeps its weights
        else:
            assert run.result_version is None and "No version was registered" in run.error
        assert not [name for name in left if name.startswith(f".run-{run.pk}")]  # no temporary folders
        assert f"run-{run.pk}" in left or stage != "evaluating"

    # The project is not blocked: with no pause the next run trains and is judged normally.
    pause.write_text("")
    rate_everything(project, user)
    run = training_services.training_run_create(project=project, trigger="manual")
    run = celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(pk=run.pk, status__in=["succeeded", "failed"]).first(), 120, "a clean run"
    )
    assert run.status == "succeeded", f"{run.error}\n{run.log}"
    print(f"seconds from SIGKILL to failed: {seconds}")


def test_a_training_worker_killed_whole_has_its_run_failed_by_the_heartbeat_reaper_within_a_minute(
    project, make_user, models_dir, celery_processes, tmp_path, monkeypatch
):
    from webapp.training import liveness

    monkeypatch.setenv("REWARDLOOP_CHAOS_PAUSE", "updating:300")
    training_services.schedule_ensure(train_interval_s=3600, pool_interval_s=3600)
    training_log = celery_processes.start(
        "training", "worker", "-Q", "training", "-c", "1", "--purge", "--loglevel", "INFO", "-n", "train-e2e@%h"
    )
    generation_log = celery_processes.start(
        "generation", "worker", "-Q", "generation", "-c", "1", "--purge", "--loglevel", "INFO", "-n", "gen-e2e@%h"
    )
    celery_processes.wait_for_log(training_log, "ready.")
    celery_processes.wait_for_log(generation_log, "ready.")
    celery_processes.start("beat", "beat", "--loglevel", "INFO")
    rate_everything(project, make_user("a"))
    run = training_services.training_run_create(project=project, trigger="manual")
    celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(pk=run.pk, stage="updating").exists(), 90, "the run to start updating"
    )
    time.sleep(2 * liveness.HEARTBEAT_EVERY_S)
    beat_before = TrainingRun.objects.get(pk=run.pk).heartbeat_at
    time.sleep(liveness.HEARTBEAT_EVERY_S + 1)
    assert TrainingRun.objects.get(pk=run.pk).heartbeat_at > beat_before  # it beats while paused in a stage

    training = next(proc for name, proc, _ in celery_processes.procs if name == "training")
    os.killpg(training.pid, signal.SIGKILL)  # main process and pool process: no one is left to notice
    killed = time.monotonic()
    run = celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(pk=run.pk, status="failed").first(), LOST_WITHIN_S + 30, "the reaper"
    )
    elapsed = time.monotonic() - killed
    assert elapsed < LOST_WITHIN_S, elapsed
    assert "The training worker was lost while updating the policy: it stopped reporting" in run.error
    print(f"seconds from killing the whole worker to failed: {elapsed:.1f}")
