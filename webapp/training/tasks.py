"""Training tasks (queue ``training``, one at a time). Thin: take ids, call a service.

A run is a pipeline of steps (:mod:`.pipeline`), one task message per step:
``training_run_execute(run_id)`` starts a queued run with its first step, and
each finished step sends ``training_step(run_id, next_step)`` after commit. Any
training worker may take any step; a message delivered twice does nothing more.

Also the worker-side half of noticing lost runs (:mod:`.liveness`): the main
process of a worker fails a run at once when the pool process running it dies,
and a restarted worker fails the runs its previous processes left running.
"""

import logging
import os

from billiard.exceptions import WorkerLostError
from celery import shared_task
from celery.signals import task_failure, task_prerun, worker_ready

from . import liveness, pipeline, services
from .models import STEP_ORDER

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True)
def training_run_execute(self, run_id: int) -> None:
    """Start a queued training run with its first step. Safe to deliver twice: a run is claimed once."""
    services.training_step_run(run_id=run_id, step=STEP_ORDER[0], worker=f"{self.request.hostname}:{os.getpid()}")


@shared_task(bind=True, acks_late=True)
def training_step(self, run_id: int, step: str) -> None:
    """Run one step of a running run. Safe to deliver twice: a done step is never run again."""
    services.training_step_run(run_id=run_id, step=step, worker=f"{self.request.hostname}:{os.getpid()}")


@shared_task
def training_schedule() -> int:
    """Beat entry: start runs for projects with enough new ratings."""
    return len(services.training_schedule_tick())


@shared_task
def training_runs_reap() -> int:
    """Beat entry (generation queue, every few seconds): fail runs whose heartbeat stopped."""
    return liveness.training_runs_reap_stale()


@shared_task(acks_late=True)
def version_samples_ensure(version_id: int) -> int:
    """Complete the held-out prompts with a version (for comparisons) and store its metrics. Idempotent."""
    from webapp.policies.models import ModelVersion

    from . import evaluation

    version = ModelVersion.objects.select_related("project").filter(pk=version_id).first()
    if version is None:
        return 0
    written = evaluation.version_samples_ensure(version=version)
    evaluation.version_evaluate(version=version)
    return written


@task_prerun.connect
def _release_trained_policy(sender=None, **_):
    """Any task but a run's step drops the trained policy this process kept for an evaluate step.

    Exports, reward-model fits and evaluations need the memory; a step checks the run itself
    (:func:`webapp.training.services.training_step_run`).
    """
    if sender not in (training_run_execute, training_step):
        pipeline.trained_release()


@task_failure.connect(sender=training_run_execute)
@task_failure.connect(sender=training_step)
def _run_worker_lost(sender=None, exception=None, args=None, kwargs=None, **_):
    """In the worker's main process: the pool process running a step died (SIGKILL, OOM).

    Fail the run now if the step was running; resume it if the step had finished
    (:func:`.liveness.training_step_lost`).
    """
    if not isinstance(exception, WorkerLostError):
        return  # an exception inside the task: the service has recorded it already
    args, kwargs = list(args or []), kwargs or {}
    run_id = args[0] if args else kwargs.get("run_id")
    step = args[1] if len(args) > 1 else kwargs.get("step", STEP_ORDER[0])
    if run_id is None:
        return
    try:
        liveness.training_step_lost(run_id=int(run_id), step=step, reason=f"its worker process died ({exception})")
    except Exception:  # noqa: BLE001 - the heartbeat reaper still catches it
        log.exception("could not fail lost run %s", run_id)


@worker_ready.connect
def _fail_runs_of_previous_life(sender=None, **_):
    """A worker that starts under a name whose processes left runs running: those processes are gone."""
    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    try:
        liveness.training_runs_fail_of_worker(hostname=hostname)
    except Exception:  # noqa: BLE001 - the heartbeat reaper still catches them
        log.exception("could not fail the runs left by %s", hostname)
