"""Noticing that a training run's worker is gone, and cleaning up after it.

A run's worker can die at any point: killed by the OOM killer or by hand,
the machine lost. Three paths notice, fastest first:

1. **The pool process was killed** (SIGKILL, OOM): the Celery worker's main
   process sees its child exit and fires ``task_failure`` with
   ``WorkerLostError``; ``tasks.py`` passes that here at once (about 1-10 s,
   Celery's ``worker_lost_wait``).
2. **The whole worker restarted**: on ``worker_ready`` every run still marked
   running by a process of that worker name is failed (``tasks.py``).
3. **Anything else** (the machine vanished, the worker is wedged): the run's
   heartbeat stops. A thread in the worker writes ``heartbeat_at`` every
   :data:`HEARTBEAT_EVERY_S` seconds through loading, update, save and
   evaluation; a run silent for :data:`LOST_AFTER` is failed by the reaper,
   which beat runs every :data:`REAP_EVERY_S` seconds on the generation queue
   (the training worker may be the one that is gone). Worst case:
   ``LOST_AFTER + REAP_EVERY_S`` plus a busy generation worker's current task.

A lost run ends ``failed`` with what it was doing when it was lost. A version
it had registered is held back (not served) with that reason, and its
half-written or unregistered weight folders are removed.

Per step (:mod:`.pipeline`): only a step that was *running* when its worker was
lost fails the run (the step ``failed``, the steps after it ``skipped``). It is
not retried automatically: a step that killed its worker (out of memory, a
driver crash) would most likely kill the next one too, and staff see the
failure at once and can start a new run. A run lost *between* steps (its last
step is done, the next one queued and not started: the worker died after
committing a step but before or after sending the next message, or that
message was lost) is not failed but resumed: the next step's message is sent
again, and whichever training worker takes it carries on; finished steps are
never repeated. The same three paths notice it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.db import connection, transaction
from django.utils import timezone

from webapp import broker
from webapp.policies import artifacts
from webapp.policies import services as policy_services
from webapp.policies.models import ModelVersion

from .models import STEP_ORDER, TrainingRun, TrainingStep

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
# A running run with no heartbeat for this long is declared lost (six missed beats).
LOST_AFTER = timedelta(seconds=30)
REAP_EVERY_S = 15
# For bench/chaos.py and the worker-loss tests only: "stage:seconds" (or a file holding it) pauses
# the worker that long when it enters that stage, so a killer can hit it. Unset in production.
CHAOS_PAUSE_ENV = "REWARDLOOP_CHAOS_PAUSE"
# The task that runs one step: args (run_id, step name). Named, not imported: tasks import this module.
STEP_TASK_NAME = "webapp.training.tasks.training_step"


class Heartbeat:
    """Context manager: a daemon thread that stamps ``heartbeat_at`` on a running run every few seconds.

    It writes through its own database connection, so it keeps beating while the
    worker's thread is busy in torch (which releases the GIL). Inside a caller's
    open transaction (a test wrapped in one) it does nothing: another connection
    could not see the uncommitted run, and on SQLite would wait for its lock.
    """

    def __init__(self, run_id: int, every_s: float = HEARTBEAT_EVERY_S):
        self.run_id = run_id
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.every_s):
                try:
                    TrainingRun.objects.filter(pk=self.run_id, status=TrainingRun.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one retries
                    log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        if not connection.in_atomic_block:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{self.run_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def run_log(run: TrainingRun, line: str) -> None:
    """Append a time-stamped ``line`` to the run's log (keeping the last 20,000 characters), with a heartbeat."""
    stamp = timezone.now().strftime("%H:%M:%S")
    run.log = (run.log + f"[{stamp}] {line}\n")[-20000:]
    run.heartbeat_at = timezone.now()
    TrainingRun.objects.filter(pk=run.pk).update(log=run.log, heartbeat_at=run.heartbeat_at)


def stage_enter(run: TrainingRun, stage: str) -> None:
    """Record that the worker entered ``stage`` (a :class:`TrainingRun.Stage`), with a heartbeat."""
    run.stage = stage
    TrainingRun.objects.filter(pk=run.pk).update(stage=stage, heartbeat_at=timezone.now())
    chaos_pause(stage)


def chaos_pause(point: str) -> None:
    """Pause at ``point`` (a stage, or ``after-<step>`` between steps) as :data:`CHAOS_PAUSE_ENV` says."""
    pause_s = _chaos_pause_s(point)
    if pause_s:
        time.sleep(pause_s)


def _chaos_pause_s(stage: str) -> float:
    """Seconds to pause at ``stage`` from :data:`CHAOS_PAUSE_ENV`: "stage:seconds[,stage:seconds]",
    or the path of a file holding that (read at every stage, so a test can change it)."""
    spec = os.environ.get(CHAOS_PAUSE_ENV, "")
    if spec.startswith("/"):
        try:
            spec = Path(spec).read_text()
        except OSError:
            spec = ""
    for item in spec.replace("\n", ",").split(","):
        name, _, seconds = item.strip().partition(":")
        if name == stage and seconds:
            return float(seconds)
    return 0.0


def run_weights_name(run: TrainingRun) -> str:
    """The name of the run's new version folder in the ``models`` storage: ``<project>/run-N``."""
    return f"{run.project.slug}/run-{run.pk}"


def run_work_name(run: TrainingRun) -> str:
    """The name of the run's working folder in the ``models`` storage: ``<project>/.run-N.work``."""
    return f"{run.project.slug}/.run-{run.pk}.work"


def run_weights_dir(run: TrainingRun) -> Path:
    """The local folder a run writes its new version's weights to (local storage: where they stay)."""
    return policy_services.version_weights_dir(project=run.project, name=f"run-{run.pk}")


def run_weights_ref(run: TrainingRun) -> str:
    """What the run's version records as ``weights_path``: its name in the ``models`` storage
    (:func:`run_weights_name`, ``<slug>/run-N``), which each machine resolves in its own models
    folder or cache (:func:`webapp.policies.artifacts.models_folder`), with either storage."""
    return run_weights_name(run)


def run_version(run: TrainingRun) -> ModelVersion | None:
    """The version registered with the run's weights, if any: recorded by name, or by this machine's
    absolute folder as versions were before names were portable (migration 0014 left those whose
    folder has no manifest)."""
    refs = [run_weights_ref(run), str(run_weights_dir(run))]
    return ModelVersion.objects.filter(project_id=run.project_id, weights_path__in=refs).first()


def run_work_dir(run: TrainingRun) -> Path:
    """The run's local working folder: the trained weights before the save step publishes them.

    Local storage: ``.run-N.work`` next to ``run-N`` (the batch file lies there too), hidden
    from version listings. Remote storage: the same name under this machine's
    ``REWARDLOOP_CACHE_DIR/work``. Removed with the other ``.run-N.*`` leftovers when the
    run ends (:func:`run_leftovers_remove`).
    """
    local = artifacts.local_path(run_work_name(run))
    return local if local is not None else artifacts.cache_dir() / "work" / run_work_name(run)


def steps_close(*, run_id: int, running_to: str, error: str = "") -> None:
    """End a run's steps with the run: the running one becomes ``running_to`` (with ``error``), queued ones ``skipped``."""
    now = timezone.now()
    TrainingStep.objects.filter(run_id=run_id, status=TrainingStep.Status.RUNNING).update(
        status=running_to, finished_at=now, error=error
    )
    TrainingStep.objects.filter(run_id=run_id, status=TrainingStep.Status.QUEUED).update(
        status=TrainingStep.Status.SKIPPED
    )


def step_pending(*, run_id: int) -> str | None:
    """The step a running run waits for *between* steps: the first one not done, when it is queued,
    no step is running and at least one is done. None otherwise (a step is running, or none started)."""
    steps = dict(TrainingStep.objects.filter(run_id=run_id).values_list("name", "status"))
    if TrainingStep.Status.DONE not in steps.values() or TrainingStep.Status.RUNNING in steps.values():
        return None
    for name in STEP_ORDER:
        status = steps.get(name, TrainingStep.Status.QUEUED)
        if status != TrainingStep.Status.DONE:
            return name if status == TrainingStep.Status.QUEUED else None
    return None


def step_send(*, run_id: int, step: str) -> bool:
    """Send the message that runs ``step`` of run ``run_id``; True when the broker accepted it."""
    return broker.task_send(STEP_TASK_NAME, args=[run_id, step])


def training_run_resume(*, run_id: int, reason: str) -> str | None:
    """Send again the next step of a run lost between steps (see the module's notes); returns that step or None.

    Stamps the heartbeat, so the reaper waits :data:`LOST_AFTER` before sending it again
    (a duplicate message is harmless: a step runs only from ``queued``).
    """
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id, status=TrainingRun.Status.RUNNING).first()
        if run is None:
            return None
        step = step_pending(run_id=run_id)
        if step is None:
            return None
        stamp = timezone.now()
        line = f"[{stamp:%H:%M:%S}] resumed between steps ({reason}): step {step} sent to the training queue again\n"
        TrainingRun.objects.filter(pk=run_id).update(heartbeat_at=stamp, log=(run.log + line)[-20000:])
    step_send(run_id=run_id, step=step)
    return step


def training_step_lost(*, run_id: int, step: str, reason: str) -> TrainingRun | None:
    """The process running ``step`` of a run died: fail the run if the step was still running,
    resume it if the step had finished (it died between committing the step and sending the next)
    or had not started (it died before claiming it). Returns the failed run, or None."""
    status = TrainingStep.objects.filter(run_id=run_id, name=step).values_list("status", flat=True).first()
    if status in (TrainingStep.Status.DONE, TrainingStep.Status.QUEUED):
        training_run_resume(run_id=run_id, reason=reason)
        return None
    return training_run_fail_lost(run_id=run_id, reason=reason)


def run_leftovers_remove(run: TrainingRun) -> list[Path]:
    """Delete what a dead run left on disk; returns the removed paths.

    ``pgcore.policy.atomic_directory`` writes ``.run-N.tmp-*`` (and swaps through
    ``.run-N.old-*``) next to ``run-N``; a killed save leaves them behind. ``run-N``
    itself is removed only if no version was registered with it.
    """
    out_dir = run_weights_dir(run)
    removed = []
    for folder in {out_dir.parent, run_work_dir(run).parent}:
        if folder.is_dir():
            for leftover in folder.glob(f".{out_dir.name}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover)
    registered = run_version(run) is not None
    if out_dir.exists() and not registered:
        shutil.rmtree(out_dir, ignore_errors=True)
        removed.append(out_dir)
    if not artifacts.is_local():  # the batch file and an unregistered upload in the bucket
        artifacts.storage().delete(f"{run_work_name(run)}/batch.json")
        if not registered:
            artifacts.folder_delete(run_weights_name(run))
        removed.append(Path(run_work_name(run)))
    return removed


def training_run_fail_lost(*, run_id: int, reason: str) -> TrainingRun | None:
    """Fail a running run whose worker is gone; hold back any version it registered; clean its files.

    ``reason`` says how the loss was noticed (e.g. "the worker process was killed
    (signal 9)"). The error names the stage it was in. Returns the run, or None if
    it was not running (finished meanwhile, or failed by another path): safe to
    call from several paths at once.
    """
    now = timezone.now()
    with transaction.atomic():
        run = (
            TrainingRun.objects.select_for_update()
            .select_related("project")
            .filter(pk=run_id, status=TrainingRun.Status.RUNNING)
            .first()
        )
        if run is None:
            return None
        doing = TrainingRun.Stage(run.stage).label if run.stage else "starting"
        version = run.result_version or run_version(run)
        if version is not None:
            held = (
                f"Not served: the worker running run {run.pk} was lost while {doing}, "
                "before the promotion guard could judge this version."
            )
            from .evaluation import version_hold_back

            version_hold_back(version=version, reasons=[held])
            outcome = f"v{version.number} was written but is held back (not served)."
        else:
            outcome = "No version was registered; the served version is unchanged."
        error = f"The training worker was lost while {doing}: {reason}. {outcome}"
        # Clean up before the failure is committed, so nobody sees a failed run with its
        # temporary folders still on disk (the runner's promote step does the same).
        try:
            removed = run_leftovers_remove(run)
        except Exception:  # a storage that is down must not keep the run "running": fail it anyway
            log.exception("run %s: its leftovers could not be removed", run.pk)
            removed = []
        steps_close(run_id=run.pk, running_to=TrainingStep.Status.FAILED, error=error)
        stamp = now.strftime("%H:%M:%S")
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.FAILED,
            error=error,
            finished_at=now,
            result_version=version,
            log=(run.log + f"[{stamp}] failed: {error}\n")[-20000:],
        )
    if removed:
        log.info("run %s: removed %s", run.pk, ", ".join(map(str, removed)))
    run.refresh_from_db()
    return run


def training_runs_reap_stale(*, now=None) -> int:
    """Fail running runs with no heartbeat for :data:`LOST_AFTER`, or resume those silent between
    steps (:func:`training_run_resume`); returns how many were failed."""
    now = now or timezone.now()
    silent = TrainingRun.objects.filter(
        status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - LOST_AFTER
    ).values_list("pk", flat=True)
    failed = 0
    for run_id in list(silent):
        seconds = int(LOST_AFTER.total_seconds())
        if step_pending(run_id=run_id):
            training_run_resume(run_id=run_id, reason=f"no step started for over {seconds} s")
            continue
        reason = f"it stopped reporting (no heartbeat for over {seconds} s)"
        failed += training_run_fail_lost(run_id=run_id, reason=reason) is not None
    return failed


def training_runs_fail_of_worker(*, hostname: str) -> int:
    """Fail every run still marked running by a process of worker ``hostname`` (it has just restarted);
    one it left between steps is resumed instead. Returns how many were failed."""
    stale = TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING, worker__startswith=f"{hostname}:")
    failed = 0
    for run_id in list(stale.values_list("pk", flat=True)):
        reason = f"its worker {hostname} restarted"
        if step_pending(run_id=run_id):
            training_run_resume(run_id=run_id, reason=reason)
            continue
        failed += training_run_fail_lost(run_id=run_id, reason=reason) is not None
    return failed
