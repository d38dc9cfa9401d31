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

from webapp.policies import services as policy_services
from webapp.policies.models import ModelVersion

from .models import TrainingRun

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
# A running run with no heartbeat for this long is declared lost (six missed beats).
LOST_AFTER = timedelta(seconds=30)
REAP_EVERY_S = 15
# For bench/chaos.py and the worker-loss tests only: "stage:seconds" (or a file holding it) pauses
# the worker that long when it enters that stage, so a killer can hit it. Unset in production.
CHAOS_PAUSE_ENV = "REWARDLOOP_CHAOS_PAUSE"


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


def stage_enter(run: TrainingRun, stage: str) -> None:
    """Record that the worker entered ``stage`` (a :class:`TrainingRun.Stage`), with a heartbeat."""
    run.stage = stage
    TrainingRun.objects.filter(pk=run.pk).update(stage=stage, heartbeat_at=timezone.now())
    pause_s = _chaos_pause_s(stage)
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


def run_weights_dir(run: TrainingRun) -> Path:
    """The folder a run writes its new version's weights to."""
    return policy_services.version_weights_dir(project=run.project, name=f"run-{run.pk}")


def run_leftovers_remove(run: TrainingRun) -> list[Path]:
    """Delete what a dead run left on disk; returns the removed paths.

    ``pgcore.policy.atomic_directory`` writes ``.run-N.tmp-*`` (and swaps through
    ``.run-N.old-*``) next to ``run-N``; a killed save leaves them behind. ``run-N``
    itself is removed only if no version was registered with it.
    """
    out_dir = run_weights_dir(run)
    removed = []
    if out_dir.parent.is_dir():
        for leftover in out_dir.parent.glob(f".{out_dir.name}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    if out_dir.exists() and not ModelVersion.objects.filter(weights_path=str(out_dir)).exists():
        shutil.rmtree(out_dir, ignore_errors=True)
        removed.append(out_dir)
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
        version = run.result_version or ModelVersion.objects.filter(weights_path=str(run_weights_dir(run))).first()
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
        stamp = now.strftime("%H:%M:%S")
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.FAILED,
            error=error,
            finished_at=now,
            result_version=version,
            log=(run.log + f"[{stamp}] failed: {error}\n")[-20000:],
        )
    removed = run_leftovers_remove(run)
    if removed:
        log.info("run %s: removed %s", run.pk, ", ".join(map(str, removed)))
    run.refresh_from_db()
    return run


def training_runs_reap_stale(*, now=None) -> int:
    """Fail running runs with no heartbeat for :data:`LOST_AFTER`; returns how many."""
    now = now or timezone.now()
    silent = TrainingRun.objects.filter(
        status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - LOST_AFTER
    ).values_list("pk", flat=True)
    failed = 0
    for run_id in list(silent):
        reason = f"it stopped reporting (no heartbeat for over {int(LOST_AFTER.total_seconds())} s)"
        failed += training_run_fail_lost(run_id=run_id, reason=reason) is not None
    return failed


def training_runs_fail_of_worker(*, hostname: str) -> int:
    """Fail every run still marked running by a process of worker ``hostname`` (it has just restarted)."""
    stale = TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING, worker__startswith=f"{hostname}:")
    failed = 0
    for run_id in list(stale.values_list("pk", flat=True)):
        reason = f"its worker {hostname} restarted"
        failed += training_run_fail_lost(run_id=run_id, reason=reason) is not None
    return failed
