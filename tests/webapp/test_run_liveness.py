"""Failing a run whose worker is gone: the stage it was in, its version held back, its files removed.

The worker-process kills themselves are in tests/e2e/test_worker_loss.py; here the
leftovers are made by a real process killed with SIGKILL inside pgcore's atomic save.
"""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from webapp.annotation.models import Rating
from webapp.policies import services as policy_services
from webapp.policies.models import ModelVersion
from webapp.training import liveness
from webapp.training import services as training_services
from webapp.training.models import TrainingRun

KILLED_MID_SAVE = """
import os, signal, sys
from pgcore.policy import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "adapter_model.safetensors").write_bytes(b"half of it")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def running_run(project, annotator, make_completion, *, stage, heartbeat_age_s=0):
    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=3)
    run = training_services.training_run_create(project=project, trigger="manual")
    beat = timezone.now() - timedelta(seconds=heartbeat_age_s)
    TrainingRun.objects.filter(pk=run.pk).update(status="running", stage=stage, started_at=beat, heartbeat_at=beat)
    run.refresh_from_db()
    return run


def test_a_run_killed_mid_save_is_failed_and_its_temporary_folder_removed(project, annotator, make_completion):
    run = running_run(project, annotator, make_completion, stage="saving")
    out_dir = liveness.run_weights_dir(run)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(out_dir)], check=False)
    assert killed.returncode == -9
    assert list(out_dir.parent.glob(f".{out_dir.name}.tmp-*"))  # what a killed save leaves behind

    run = liveness.training_run_fail_lost(run_id=run.pk, reason="its worker process died (signal 9)")

    assert run.status == "failed" and run.finished_at
    assert run.error.startswith("The training worker was lost while saving the new weights: its worker process died")
    assert "No version was registered" in run.error and run.result_version is None
    assert not list(out_dir.parent.iterdir())
    assert liveness.training_run_fail_lost(run_id=run.pk, reason="again") is None  # a second path changes nothing


def test_weights_written_but_never_registered_are_removed(project, annotator, make_completion):
    run = running_run(project, annotator, make_completion, stage="saving")
    out_dir = liveness.run_weights_dir(run)
    out_dir.mkdir(parents=True)
    (out_dir / "adapter_model.safetensors").write_bytes(b"whole")
    liveness.training_run_fail_lost(run_id=run.pk, reason="lost")
    assert not out_dir.exists()


def test_a_version_registered_before_the_loss_is_held_back_and_keeps_its_weights(project, annotator, make_completion):
    run = running_run(project, annotator, make_completion, stage="evaluating")
    out_dir = liveness.run_weights_dir(run)
    out_dir.mkdir(parents=True)
    version = policy_services.version_register(
        project=project, parent=project.served_version, kind="lora", weights_path=out_dir, sha256="x",
        ratings_used=1, metrics={},
    )
    run = liveness.training_run_fail_lost(run_id=run.pk, reason="its worker process died")
    version.refresh_from_db()
    assert run.result_version == version and "v1 was written but is held back (not served)" in run.error
    assert version.held_back_reason.startswith("Not served: the worker running run")
    assert "lost while evaluating on held-out prompts" in version.held_back_reason
    assert out_dir.exists()
    project.refresh_from_db()
    assert project.served_version.number == 0


def test_the_reaper_fails_only_runs_silent_for_longer_than_lost_after(project, annotator, make_completion):
    silent = running_run(project, annotator, make_completion, stage="updating",
                         heartbeat_age_s=liveness.LOST_AFTER.total_seconds() + 1)
    assert liveness.training_runs_reap_stale() == 1
    silent.refresh_from_db()
    assert silent.status == "failed" and "stopped reporting" in silent.error
    alive = running_run(project, annotator, make_completion, stage="updating", heartbeat_age_s=5)
    assert liveness.training_runs_reap_stale() == 0
    alive.refresh_from_db()
    assert alive.status == "running"


def test_a_restarted_worker_fails_the_runs_its_old_processes_left_running(project, annotator, make_completion):
    run = running_run(project, annotator, make_completion, stage="updating")
    TrainingRun.objects.filter(pk=run.pk).update(worker="training@box:4242")
    assert liveness.training_runs_fail_of_worker(hostname="training@other") == 0
    assert liveness.training_runs_fail_of_worker(hostname="training@box") == 1
    run.refresh_from_db()
    assert run.status == "failed" and "its worker training@box restarted" in run.error


def test_beat_runs_the_reaper_every_few_seconds_on_the_generation_queue(db):
    from django_celery_beat.models import PeriodicTask

    training_services.schedule_ensure()
    reaper = PeriodicTask.objects.get(task=training_services.REAP_TASK_NAME)
    assert reaper.interval.every == liveness.REAP_EVERY_S and reaper.queue == "generation"
