"""What each step of a training run does after its batch is built: update, save, evaluate, promote.

A run is a pipeline of steps (:data:`.models.STEP_ORDER`), each run by its own
Celery task from the run's id alone; :func:`.services.training_step_run`
claims a step, records its state on a :class:`.models.TrainingStep` row, calls
the function here, and sends the next step when it is done. What one step hands
to the next lives on disk in the run's working folder
(``.run-N.work`` in the ``models`` storage, :mod:`webapp.policies.artifacts`) or in
the database, so the next step may run in another worker process, on another machine
when the storage is a bucket:

==========  ==========================================  ===============================
step        reads                                       leaves
==========  ==========================================  ===============================
batch       the project's unused ratings                ``batch.json`` (the TrainBatch),
                                                        the run's ratings and parent
update      ``batch.json``, the parent version          ``policy/`` (trained weights,
                                                        written atomically; with a bucket
                                                        also uploaded as ``run-N``, manifest
                                                        last), run metrics
save        ``policy/`` (or the uploaded ``run-N``)     ``run-N`` with its manifest and its
                                                        registered version (``result_version``)
evaluate    the registered version                      its held-out samples and metrics
promote     the evaluations                             served or held back; run ended
==========  ==========================================  ===============================

Every function here is safe to run again after a crash part-way: the update
starts again from the batch; the save moves a complete folder into place with
one rename and registers it in one transaction (and picks up a folder renamed
by an attempt that died before registering); the evaluation skips prompts it
has already completed; the promotion decides under a lock on the run.

Cancel is checked after every optimiser step, after the update, around the
evaluation and under the lock as the promotion decides, and, between steps,
before a step starts. Raising ``pgcore.trainer.TrainingCancelled`` here ends the
run cancelled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from pgcore.atomic import fsync_dir
from webapp.annotation import services as annotation_services
from webapp.errors import ApplicationError
from webapp.policies import artifacts
from webapp.policies import services as policy_services
from webapp.policies.models import ModelVersion, Project

from . import evaluation, liveness, overoptimisation
from .models import TrainingRun, TrainingStep

BATCH_FILE = "batch.json"
TRAINED_DIR = "policy"

# The policy the last update step of this process trained, with its run's id and its weights'
# sha256: the evaluate step that usually follows in the same worker process takes it instead
# of loading the base model and the adapter from disk again. One slot, bounded: emptied by
# that evaluate step, by any step of another run starting in this process (so a worker
# whose run was evaluated elsewhere holds it only until its next run), by the run ending
# here, and by any other task this process takes (:func:`trained_release`).
_trained: dict[tuple[int, str], object] = {}


def _trained_keep(policy, *, run_id: int, sha256: str) -> None:
    _trained.clear()
    _trained[(run_id, sha256)] = policy


def _trained_take(*, run_id: int, sha256: str):
    """The policy kept by :func:`_trained_keep` for run ``run_id``'s weights ``sha256``, or None; the slot is emptied."""
    policy = _trained.pop((run_id, sha256), None)
    _trained.clear()
    return policy


def trained_held() -> tuple[int, object] | None:
    """``(run id, policy)`` of the trained policy this process holds for an evaluate step, or None."""
    for (run_id, _sha256), policy in _trained.items():
        return run_id, policy
    return None


def trained_release(*, except_run_id: int | None = None) -> bool:
    """Drop the trained policy this process holds, unless it is run ``except_run_id``'s; returns whether one was dropped."""
    held = trained_held()
    if held is None or held[0] == except_run_id:
        return False
    _trained.clear()
    return True


def cancel_requested(run_id: int) -> bool:
    """Whether staff asked run ``run_id`` to stop."""
    return TrainingRun.objects.filter(pk=run_id, cancel_requested_at__isnull=False).exists()


def _raise_if_cancelled(run: TrainingRun, where: str) -> None:
    from pgcore.trainer import TrainingCancelled

    if cancel_requested(run.pk):
        raise TrainingCancelled(f"cancel requested; stopped {where}")


def batch_write(*, run: TrainingRun, batch) -> Path:
    """Store the run's :class:`pgcore.trainer.TrainBatch` as ``batch.json`` in its working folder (atomically),
    in the ``models`` storage, so the update step may run on another machine."""
    name = f"{liveness.run_work_name(run)}/{BATCH_FILE}"
    artifacts.put_bytes(name, json.dumps(dataclasses.asdict(batch)).encode(), "models")
    return Path(name)


def batch_read(*, run: TrainingRun):
    """The :class:`pgcore.trainer.TrainBatch` the batch step stored.

    Raises:
        ApplicationError: it is missing (the working folder was removed).
    """
    from pgcore.trainer import TrainBatch

    name = f"{liveness.run_work_name(run)}/{BATCH_FILE}"
    data = artifacts.get_bytes(name, "models")
    if data is None:
        raise ApplicationError(f"The batch of run {run.pk} is missing ({name}); start a new run.")
    return TrainBatch(**json.loads(data))


def step_update(*, run: TrainingRun, config) -> None:
    """Train the parent version on the stored batch; write the trained weights to the working folder.

    Progress, the loss/KL curve and a log line are written after every optimiser
    step, and a cancel request stops the update there (nothing is kept). Run again
    after a crash, it starts over from the batch.
    """
    from pgcore.policy import save_policy_atomic
    from pgcore.trainer import TrainingCancelled, update

    from webapp.policies.runtime import policy_load

    liveness.stage_enter(run, TrainingRun.Stage.LOADING)
    batch = batch_read(run=run)
    policy = policy_load(run.parent_version, trainable=True, config=config)
    curve: list[dict] = []

    def on_step(info: dict) -> None:
        epoch = int(info["epoch"]) + 1
        point = {
            "step": int(info["step"]),
            "epoch": epoch,
            "losses/pg_loss": float(info.get("losses/pg_loss", float("nan"))),
            "objective/kl": float(info.get("objective/kl", float("nan"))),
        }
        curve.append(point)
        line = (
            f"epoch {epoch}/{config.epochs} step {info['step']}/{info['total_steps']}: "
            f"pg_loss {point['losses/pg_loss']:.4f}, kl {point['objective/kl']:.4f}"
        )
        run.log = (run.log + f"[{timezone.now():%H:%M:%S}] {line}\n")[-20000:]
        # One write per step: the progress, the curve and the log line together.
        TrainingRun.objects.filter(pk=run.pk).update(
            progress_step=info["step"],
            progress_total=info["total_steps"],
            progress_epoch=epoch,
            curve=curve,
            log=run.log,
            heartbeat_at=timezone.now(),
        )
        if cancel_requested(run.pk):
            raise TrainingCancelled(f"cancel requested; stopped after step {info['step']}")

    liveness.stage_enter(run, TrainingRun.Stage.UPDATING)
    metrics = update(policy, batch, config, on_step=on_step)
    _raise_if_cancelled(run, "before saving")
    trained = liveness.run_work_dir(run) / TRAINED_DIR
    save_policy_atomic(policy, trained)
    if not artifacts.is_local():  # the save step may run elsewhere: upload now, manifest last
        artifacts.folder_publish(source=trained, name=liveness.run_weights_name(run))
    TrainingRun.objects.filter(pk=run.pk).update(metrics={k: float(v) for k, v in metrics.items()})
    from pgcore.policy import CHECKSUM_FILE

    policy.model.eval()  # evaluated as a loaded one would be: no dropout
    _trained_keep(policy, run_id=run.pk, sha256=json.loads((trained / CHECKSUM_FILE).read_text())["sha256"])


def step_save(*, run: TrainingRun, config) -> None:
    """Move the trained weights to ``run-N`` (one rename) and register the version with the run, atomically.

    Raises:
        ApplicationError: the trained weights are missing (the working folder was removed).
    """
    from pgcore.policy import CHECKSUM_FILE, verify_weights

    liveness.stage_enter(run, TrainingRun.Stage.SAVING)
    if run.result_version_id:
        return
    name = liveness.run_weights_name(run)
    if artifacts.is_local():
        trained = liveness.run_work_dir(run) / TRAINED_DIR
        out_dir = liveness.run_weights_dir(run)
        if trained.exists():
            if out_dir.exists():  # renamed by an attempt that died before registering it: never registered
                shutil.rmtree(out_dir)
            os.replace(trained, out_dir)
            fsync_dir(out_dir.parent)
        elif not out_dir.exists():
            raise ApplicationError(f"The trained weights of run {run.pk} are missing; start a new run.")
        artifacts.manifest_write(name)  # last: the folder is complete
        sha256 = json.loads((out_dir / CHECKSUM_FILE).read_text())["sha256"]  # recorded by pgcore as it wrote them
        verify_weights(out_dir, sha256)  # another process wrote them: check before registering
    else:
        try:
            manifest = artifacts.manifest_read(name)  # the update step uploaded the files, then this
        except artifacts.ArtifactMissing as exc:
            raise ApplicationError(f"The trained weights of run {run.pk} are missing; start a new run.") from exc
        sha256 = manifest["weights_sha256"]  # each file's hash is checked when fetched
    weights_ref = liveness.run_weights_ref(run)  # the name: each machine resolves it in its own models folder
    run.refresh_from_db(fields=["metrics"])
    with transaction.atomic():  # the version and the run's link to it appear together
        version = policy_services.version_register(
            project=run.project,
            parent=run.parent_version,
            kind=ModelVersion.Kind.LORA if config.use_lora else ModelVersion.Kind.FULL,
            weights_path=weights_ref,
            sha256=sha256,
            ratings_used=run.ratings.count(),
            metrics=run.metrics,
        )
        TrainingRun.objects.filter(pk=run.pk).update(result_version=version)
    liveness.run_log(run, f"v{version.number} written ({sha256[:12]}); completing held-out prompts for the promotion guard")


def evaluation_progress(*, run: TrainingRun, done: int, total: int, label: str) -> None:
    """Record the evaluate step's progress (``done`` of ``total`` held-out completions) with a heartbeat."""
    TrainingStep.objects.filter(run_id=run.pk, name=TrainingStep.Name.EVALUATE).update(
        progress_done=done, progress_total=total, progress_label=label[:200]
    )
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())


def step_evaluate(*, run: TrainingRun, config) -> None:
    """Complete the held-out prompts with the new version (and its parent, if never measured).

    Reports its progress on the step's row after every batch of prompts (see
    :func:`evaluation_progress`): completions written out of all the step has to write,
    counting those an earlier attempt already wrote as done.
    """
    from webapp.policies.runtime import policy_load

    version = run.result_version
    parent = run.parent_version
    # The weights this process just trained and saved (same sha256), else loaded below; taken
    # before the cancel check so that a cancelled run leaves nothing held.
    policy = version.sha256 and _trained_take(run_id=run.pk, sha256=version.sha256)
    _raise_if_cancelled(run, f"before evaluating v{version.number}")
    liveness.stage_enter(run, TrainingRun.Stage.EVALUATING)
    n_prompts = len(evaluation.eval_prompts(project=run.project))
    todo_version = len(evaluation.samples_missing(version=version))
    todo_parent = len(evaluation.samples_missing(version=parent)) if parent.evaluated_at is None else 0
    total = n_prompts * (2 if parent.evaluated_at is None else 1)
    already = total - todo_version - todo_parent
    evaluation_progress(run=run, done=already, total=total, label=f"held-out completions by v{version.number}")
    policy = policy or policy_load(version, trainable=False)
    evaluation.version_evaluate(
        version=version,
        policy=policy,
        on_progress=lambda n: evaluation_progress(
            run=run, done=already + n, total=total, label=f"held-out completions by v{version.number}"
        ),
    )
    del policy
    _raise_if_cancelled(run, f"after evaluating v{version.number}")
    if parent.evaluated_at is None:
        label = f"held-out completions by v{version.number} and its parent v{parent.number}"
        evaluation_progress(run=run, done=already + todo_version, total=total, label=label)
        evaluation.version_evaluate(
            version=parent,
            on_progress=lambda n: evaluation_progress(run=run, done=already + todo_version + n, total=total, label=label),
        )
    evaluation_progress(run=run, done=total, total=total, label=f"held-out completions, v{version.number} measured")


def step_promote(*, run: TrainingRun, config) -> None:
    """The promotion guard: serve the new version, or keep it unserved with the reasons; end the run succeeded.

    Where the project requires the arena (``Project.arena_required``), a version that passes
    the guard is not held back but waits unserved until it beats the served version there;
    staff then serve it. A version trained with the reward model that people have not rated
    enough yet waits likewise as the project's shadow candidate (``Project.shadow_version``,
    :func:`.overoptimisation.shadow_wait_reason`) while ``shadow_share`` > 0; the training
    schedule decides on it later (:func:`.overoptimisation.shadow_candidates_recheck`).
    """
    from pgcore.trainer import TrainingCancelled

    project = run.project
    version = ModelVersion.objects.get(pk=run.result_version_id)
    parent = ModelVersion.objects.get(pk=run.parent_version_id)
    liveness.stage_enter(run, TrainingRun.Stage.PROMOTING)
    reasons = evaluation.guard_reasons(version=version, parent=parent)
    check = overoptimisation.rm_gain_check(run=run, version=version, parent=parent)
    reasons += check.reasons
    if run.reward_model_id:
        run.refresh_from_db(fields=["metrics"])
        TrainingRun.objects.filter(pk=run.pk).update(metrics={**run.metrics, **check.metrics()})
        ModelVersion.objects.filter(pk=version.pk).update(metrics={**(version.metrics or {}), **check.metrics()})
        predicted = "none (no held-out samples)" if check.predicted_gain is None else f"{check.predicted_gain:+.3f}"
        human = (
            f"{check.human_gain:+.3f}"
            if check.human_gain is not None
            else f"not yet measured ({check.n_human[0]} rated completions of v{version.number}, "
            f"{overoptimisation.min_human()} needed)"
        )
        liveness.run_log(run, f"reward-model gain check: predicted {predicted}, people {human}")
    if version.evaluated_at:
        liveness.run_log(
            run,
            f"held-out: KL to base {version.kl_to_base:.4f}, distinct-2 {version.distinct2:.3f} "
            f"(parent {parent.distinct2 or 0:.3f}), identical {version.identical_fraction:.0%}",
        )
    else:
        liveness.run_log(run, "no held-out prompts: the promotion guard had nothing to judge")
    # The working folder goes before the run is marked succeeded, so a finished run never has one
    # (nothing after the save step reads it; the step runner removes leftovers again, idempotently).
    liveness.run_leftovers_remove(run)
    with transaction.atomic():
        # The run row is locked until the decision commits: a cancel either lands before it (and is
        # honoured here) or after it (and finds the run finished). Only a run still running may
        # promote: one failed meanwhile as lost must not serve anything.
        current = TrainingRun.objects.select_for_update().filter(pk=run.pk).first()
        if current is None or current.status != TrainingRun.Status.RUNNING:
            raise ApplicationError("The run was ended by another process before the promotion guard finished.")
        if current.cancel_requested_at is not None:
            raise TrainingCancelled(f"cancel requested; stopped before serving v{version.number}")
        project.refresh_from_db(fields=["served_version", "shadow_share"])
        shadow_wait = "" if reasons else overoptimisation.shadow_wait_reason(
            run=run, project=project, version=version, check=check
        )
        waiting = (
            []
            if reasons
            else ([shadow_wait] if shadow_wait else [])
            + policy_services.version_promotion_blockers(version=version, served=project.served_version)
        )
        if reasons:
            evaluation.version_hold_back(version=version, reasons=reasons)
        elif shadow_wait:
            # The shadow queue mixes its completions in until people have rated enough of them; the
            # training schedule's tick then decides (overoptimisation.shadow_candidates_recheck).
            Project.objects.filter(pk=project.pk).update(shadow_version=version)
            transaction.on_commit(lambda: annotation_services.pool_refill_send(project_id=project.pk))
        elif waiting:
            pass  # passed the guard, not held back: served by staff once it wins the arena
        else:
            # After commit, promotion asks annotation for a pool refill from the new version (a down
            # broker is logged, not raised: the beat refill catches up; the run has succeeded either way).
            policy_services.version_promote(version=version, user=None, refill_pool=True, promoting_run_id=run.pk)
        now = timezone.now()
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.SUCCEEDED,
            promoted=not (reasons or waiting),
            held_back_reason=" ".join(reasons or waiting),
            finished_at=now,
        )
        TrainingStep.objects.filter(run_id=run.pk, name=TrainingStep.Name.PROMOTE).update(
            status=TrainingStep.Status.DONE, finished_at=now
        )
    if reasons:
        liveness.run_log(run, f"v{version.number} kept but NOT served: {' '.join(reasons)}")
    elif shadow_wait:
        liveness.run_log(run, f"v{version.number} passed the promotion guard so far and waits unserved: {' '.join(waiting)}")
    elif waiting:
        liveness.run_log(
            run, f"v{version.number} passed the promotion guard; it is served once it wins the arena: {' '.join(waiting)}"
        )
    else:
        liveness.run_log(run, f"v{version.number} passed the promotion guard and is served")
