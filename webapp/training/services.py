"""Writes for training: creating, running, scheduling runs.

A run never touches the served version until its new weights are safely on
disk (written to a temporary folder, fsynced, renamed; sha256 recorded) and
registered. Any failure before that leaves the project exactly as it was.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from webapp import broker
from webapp.annotation import selectors as annotation_selectors
from webapp.annotation.models import Completion, Rating
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, ModelVersion, Project

from . import liveness
from .models import TrainingRun

log = logging.getLogger(__name__)

# A queued run whose message the broker never accepted is re-sent by the schedule once it is this old
# (younger ones may still be sending).
REDISPATCH_AFTER = timedelta(seconds=10)
TRAIN_TASK_NAME = "webapp.training.tasks.training_schedule"
POOL_TASK_NAME = "webapp.annotation.tasks.pool_refill_all"
REAP_TASK_NAME = "webapp.training.tasks.training_runs_reap"
EXECUTE_TASK_NAME = "webapp.training.tasks.training_run_execute"
POOL_REFILL_TASK_NAME = "webapp.annotation.tasks.pool_refill"
SAMPLES_TASK_NAME = "webapp.training.tasks.version_samples_ensure"


def pg_config_for(*, project: Project, overrides: dict | None = None):
    """The project's PGConfig with ``overrides`` applied.

    Raises:
        ApplicationError: an unknown field or a value out of range (the message
            names the field and the allowed range).
    """
    from pgcore.config import PGConfig

    try:
        return PGConfig.from_dict({**(project.pg_config or {}), **(overrides or {})})
    except (TypeError, ValueError) as exc:
        raise ApplicationError(str(exc)) from exc


def training_run_create(*, project: Project, trigger: str, user=None, overrides: dict | None = None) -> TrainingRun:
    """Queue a training run on the project's unused ratings.

    ``overrides`` (e.g. ``{"lr": 1e-4, "kl_coef": 0.1, "epochs": 2}``) apply
    to this run only, on top of the project's settings. A run started by a
    person is recorded in the audit log.

    The task message is sent after commit (:func:`training_run_dispatch`). If
    the broker is unreachable the run stays queued with ``dispatched_at``
    empty and a line in its log; the schedule re-sends it
    (:func:`training_runs_redispatch`) and staff can cancel it meanwhile.
    The returned run says which happened when called outside a transaction.

    Raises:
        ApplicationError: no unused ratings, a bad override, or a run is
            already queued or running (refused by the database's
            one-active-run constraint, so two simultaneous requests cannot
            both succeed).
    """
    config = pg_config_for(project=project, overrides=overrides)
    if not annotation_selectors.new_ratings(project=project).exists():
        raise ApplicationError("There are no new ratings to train on yet.")
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(
                project=project,
                trigger=trigger,
                requested_by=user,
                parent_version=project.served_version,
                config=config.to_dict(),
                progress_epochs=config.epochs,
            )
            if user is not None:
                policy_services.audit_record(
                    project=project,
                    actor=user,
                    action=AuditEvent.Action.TRAIN,
                    target=f"run {run.pk}",
                    detail={"overrides": overrides or {}},
                )
            transaction.on_commit(lambda: training_run_dispatch(run_id=run.pk))
    except IntegrityError as exc:
        raise ApplicationError("A training run is already queued or running for this project.") from exc
    run.refresh_from_db()
    return run


def training_run_dispatch(*, run_id: int) -> bool:
    """Send a queued run's task to the training queue; True when the broker accepted it.

    Records ``dispatched_at`` on success; on failure writes a log line saying the
    broker was unreachable and the schedule will re-send it. Never raises for a
    broker problem, so a request whose run committed never fails on the send.
    """
    if not broker.task_send(EXECUTE_TASK_NAME, args=[run_id]):
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is not None and run.dispatched_at is None:
            _log(run, "not sent to a worker yet: the task queue (broker) is unreachable; the schedule re-sends it")
        return False
    TrainingRun.objects.filter(pk=run_id, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    return True


def training_runs_redispatch(*, now=None) -> int:
    """Re-send every queued run whose message the broker never accepted; returns how many went out now."""
    now = now or timezone.now()
    pending = TrainingRun.objects.filter(
        status=TrainingRun.Status.QUEUED, dispatched_at__isnull=True, created_at__lt=now - REDISPATCH_AFTER
    ).values_list("pk", flat=True)
    sent = 0
    for run_id in list(pending):
        if training_run_dispatch(run_id=run_id):
            run = TrainingRun.objects.get(pk=run_id)
            _log(run, "sent to the training queue by the schedule (the broker is reachable again)")
            sent += 1
    return sent


@transaction.atomic
def training_run_cancel(*, run: TrainingRun, user=None) -> TrainingRun:
    """Cancel a run: a queued run at once, a running one at its next checkpoint, up to promotion.

    A running run is only *asked* to stop (``cancel_requested_at``); the
    worker checks after every optimiser step, before saving, before and after
    evaluating, and under a lock on the run as it decides whether to serve.
    Stopped before saving, it writes no version; stopped later, its version is
    kept but never served (held back, with the reason). Either way the run
    ends cancelled. Audited.

    Raises:
        ApplicationError: the run has already finished.
    """
    now = timezone.now()
    stopped = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.CANCELLED, cancel_requested_at=now, cancel_requested_by=user, finished_at=now
    )
    if not stopped:
        asked = TrainingRun.objects.filter(
            pk=run.pk, status=TrainingRun.Status.RUNNING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, cancel_requested_by=user)
        if not asked:
            current = TrainingRun.objects.get(pk=run.pk)
            if current.status == TrainingRun.Status.RUNNING:
                return current  # asked already; asking twice changes nothing
            raise ApplicationError(f"Run {run.pk} has already finished ({current.get_status_display().lower()}).")
    policy_services.audit_record(
        project=run.project,
        actor=user,
        action=AuditEvent.Action.CANCEL,
        target=f"run {run.pk}",
        detail={"was": "queued" if stopped else "running"},
    )
    run.refresh_from_db()
    if stopped:
        _log(run, f"cancelled before it started{f' by {user}' if user else ''}")
    return run


def _cancel_requested(run_id: int) -> bool:
    return TrainingRun.objects.filter(pk=run_id, cancel_requested_at__isnull=False).exists()


def _log(run: TrainingRun, line: str) -> None:
    stamp = timezone.now().strftime("%H:%M:%S")
    run.log = (run.log + f"[{stamp}] {line}\n")[-20000:]
    run.heartbeat_at = timezone.now()
    TrainingRun.objects.filter(pk=run.pk).update(log=run.log, heartbeat_at=run.heartbeat_at)


def training_batch_build(*, project: Project, ratings: list[Rating], config):
    """Turn ratings into a :class:`pgcore.trainer.TrainBatch`.

    Each rated completion appears once; its reward is the mean of its
    ratings after per-annotator normalisation (statistics from every rating
    the annotator gave in this project, so a small batch does not decide
    someone's scale). Completions of one prompt share a group for the
    leave-one-out baseline, so the two completions of a pair share one.

    Scores: :func:`webapp.annotation.judgments.reward_score` (Likert ``(s - 3) / 2``,
    thumbs ±1, pairwise winner +1 / loser -1, tie 0 / 0, both bad -1 / -1).
    """
    from pgcore.rewards import RatingRecord, ratings_to_rewards
    from pgcore.trainer import TrainBatch

    from webapp.annotation.judgments import reward_score

    # Held-out prompts judge versions; their ratings (if any were stored) never train one.
    held_out = set(
        Completion.objects.filter(pk__in={r.completion_id for r in ratings}, prompt__held_out=True).values_list(
            "pk", flat=True
        )
    )
    completion_ids = sorted({r.completion_id for r in ratings} - held_out)
    if not completion_ids:
        raise ApplicationError("There are no ratings of training prompts to train on.")
    history = list(
        Rating.objects.filter(completion__project=project, completion__prompt__held_out=False).values_list(
            "completion_id", "annotator_id", "score", "thumbs_up", "comparison__choice", "comparison__pair__completion_a_id"
        )
    )
    index = {cid: i for i, cid in enumerate(completion_ids)}
    extra: dict[int, int] = {}
    for cid, *_ in history:
        if cid not in index and cid not in extra:
            extra[cid] = len(index) + len(extra)
    records = [
        RatingRecord(
            completion_index=index.get(cid, extra.get(cid)),
            annotator=annotator,
            score=reward_score(score=score, thumbs_up=thumbs_up, choice=choice, is_completion_a=cid == anchor_id),
        )
        for cid, annotator, score, thumbs_up, choice, anchor_id in history
    ]
    rewards = ratings_to_rewards(
        records,
        len(index) + len(extra),
        annotator_norm=config.annotator_norm,
        shrinkage=config.annotator_shrinkage,
    )[: len(index)]
    completions = Completion.objects.in_bulk(completion_ids)
    ordered = [completions[cid] for cid in completion_ids]
    return TrainBatch(
        prompt_ids=[list(c.prompt_token_ids) for c in ordered],
        completion_ids=[list(c.token_ids) for c in ordered],
        behaviour_logprobs=[list(c.behaviour_logprobs) for c in ordered],
        rewards=[float(x) for x in rewards.tolist()],
        group_ids=[c.prompt_id for c in ordered],
    )


def training_run_execute(*, run_id: int, worker: str = "") -> TrainingRun | None:
    """Run a queued training run to the end (called by the ``training`` task).

    Idempotent: a run that is not queued any more is left alone. ``worker``
    ("hostname:pid") is recorded on the run, so a restarted worker can fail the
    runs its dead processes left behind.

    While it runs, a heartbeat thread stamps the run every few seconds and
    each stage (loading, updating, saving, evaluating, promoting) is recorded:
    a run whose worker dies is failed within seconds to a minute
    (:mod:`.liveness`). After every optimiser step the run's progress (epoch,
    step), loss/KL curve and log are written, and a cancel request is
    honoured: the update stops, nothing is saved, the run ends ``cancelled``.

    On success the new version's weights are written atomically and
    registered, then it completes the held-out prompts and the promotion guard
    decides: served, or kept but not served with the reasons on the run and
    the version. On any error the run is marked failed with the error and the
    served version is untouched.
    """
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker[:200]
    )
    if not claimed:
        return None
    run = TrainingRun.objects.select_related("project__served_version").get(pk=run_id)
    with liveness.Heartbeat(run.pk):
        _run_stages(run)
    run.refresh_from_db()
    return run


def _run_stages(run: TrainingRun) -> None:
    """The body of :func:`training_run_execute`: every stage, and how each way of ending is recorded."""
    from pgcore.policy import save_policy_atomic
    from pgcore.trainer import TrainingCancelled, bf16_autocast_active, update

    from webapp.policies.runtime import policy_load

    from . import evaluation

    project = run.project
    try:
        liveness.stage_enter(run, TrainingRun.Stage.LOADING)
        config = pg_config_for(project=project, overrides=run.config)
        with transaction.atomic():
            parent = project.served_version
            ratings = list(annotation_selectors.new_ratings(project=project).select_related("completion"))
            if not ratings:
                raise ApplicationError("There are no new ratings to train on.")
            run.parent_version = parent
            run.progress_epochs = config.epochs
            run.save(update_fields=["parent_version", "progress_epochs"])
            run.ratings.set(ratings)
        _log(run, f"training v{parent.number} on {len(ratings)} ratings with {json.dumps(config.to_dict())}")
        if config.bf16_autocast and not bf16_autocast_active(config):
            _log(run, "this CPU has no native bf16 matrix multiply: training in fp32 (faster here, same update)")
        batch = training_batch_build(project=project, ratings=ratings, config=config)
        if not config.use_lora and parent.kind == ModelVersion.Kind.LORA:
            raise ApplicationError("Full fine-tuning cannot continue from a LoRA version; promote a full or base version.")
        policy = policy_load(parent, trainable=True, config=config)
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
            if _cancel_requested(run.pk):
                raise TrainingCancelled(f"cancel requested; stopped after step {info['step']}")

        liveness.stage_enter(run, TrainingRun.Stage.UPDATING)
        metrics = update(policy, batch, config, on_step=on_step)
        if _cancel_requested(run.pk):
            raise TrainingCancelled("cancel requested; stopped before saving")
        liveness.stage_enter(run, TrainingRun.Stage.SAVING)
        out_dir = liveness.run_weights_dir(run)
        sha256 = save_policy_atomic(policy, out_dir)
        metrics = {k: float(v) for k, v in metrics.items()}
        with transaction.atomic():  # the version and the run's link to it appear together
            version = policy_services.version_register(
                project=project,
                parent=parent,
                kind=ModelVersion.Kind.LORA if config.use_lora else ModelVersion.Kind.FULL,
                weights_path=out_dir,
                sha256=sha256,
                ratings_used=len(ratings),
                metrics=metrics,
            )
            TrainingRun.objects.filter(pk=run.pk).update(result_version=version, metrics=metrics)
        _log(run, f"v{version.number} written ({sha256[:12]}); completing held-out prompts for the promotion guard")
        if _cancel_requested(run.pk):
            raise TrainingCancelled(f"cancel requested; stopped before evaluating v{version.number}")
        liveness.stage_enter(run, TrainingRun.Stage.EVALUATING)
        evaluation.version_evaluate(version=version, policy=policy)
        del policy
        if _cancel_requested(run.pk):
            raise TrainingCancelled(f"cancel requested; stopped after evaluating v{version.number}")
        if parent.evaluated_at is None:
            evaluation.version_evaluate(version=parent)
        version.refresh_from_db()
        parent.refresh_from_db()
        liveness.stage_enter(run, TrainingRun.Stage.PROMOTING)
        reasons = evaluation.guard_reasons(version=version, parent=parent)
        if version.evaluated_at:
            _log(
                run,
                f"held-out: KL to base {version.kl_to_base:.4f}, distinct-2 {version.distinct2:.3f} "
                f"(parent {parent.distinct2 or 0:.3f}), identical {version.identical_fraction:.0%}",
            )
        else:
            _log(run, "no held-out prompts: the promotion guard had nothing to judge")
        with transaction.atomic():
            # The run row is locked until the decision commits: a cancel either lands before it (and is
            # honoured here) or after it (and finds the run finished). Only a run still running may
            # promote: one failed meanwhile as lost must not serve anything.
            current = TrainingRun.objects.select_for_update().filter(pk=run.pk).first()
            if current is None or current.status != TrainingRun.Status.RUNNING:
                raise ApplicationError("The run was ended by another process before the promotion guard finished.")
            if current.cancel_requested_at is not None:
                raise TrainingCancelled(f"cancel requested; stopped before serving v{version.number}")
            if reasons:
                evaluation.version_hold_back(version=version, reasons=reasons)
            else:
                policy_services.version_promote(version=version, user=None, refill_pool=False, promoting_run_id=run.pk)
                # Not sent: the beat refill catches up; the run has succeeded either way.
                transaction.on_commit(lambda: broker.task_send(POOL_REFILL_TASK_NAME, args=[project.pk]))
            TrainingRun.objects.filter(pk=run.pk).update(
                status=TrainingRun.Status.SUCCEEDED,
                promoted=not reasons,
                held_back_reason=" ".join(reasons),
                finished_at=timezone.now(),
            )
        if reasons:
            _log(run, f"v{version.number} kept but NOT served: {' '.join(reasons)}")
        else:
            _log(run, f"v{version.number} passed the promotion guard and is served")
    except TrainingCancelled as exc:
        with transaction.atomic():
            ended = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
                status=TrainingRun.Status.CANCELLED, finished_at=timezone.now()
            )
            written = ModelVersion.objects.filter(produced_by=run.pk).first()
            if ended and written is not None:
                who = TrainingRun.objects.filter(pk=run.pk).values_list("cancel_requested_by__username", flat=True).first()
                evaluation.version_hold_back(
                    version=written,
                    reasons=[f"Not served: run {run.pk} was cancelled{f' by {who}' if who else ''} before promotion."],
                )
        if written is not None:
            _log(run, f"cancelled: {exc}; v{written.number} is kept but not served")
        else:
            _log(run, f"cancelled: {exc}; no version written")
    except Exception as exc:  # noqa: BLE001 - every failure must end the run cleanly
        log.exception("training run %s failed", run.pk)
        message = exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}"
        ended = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.FAILED, error=message, finished_at=timezone.now()
        )
        if ended:
            _log(run, "failed:\n" + "".join(traceback.format_exception_only(type(exc), exc)).strip())
            # A version written before the failure (e.g. its evaluation broke) stays, unserved, with the reason.
            written = ModelVersion.objects.filter(produced_by=run.pk).first()
            if written is not None:
                evaluation.version_hold_back(
                    version=written, reasons=[f"Not served: the run failed after writing it ({message})."]
                )
        liveness.run_leftovers_remove(run)


# Kept here for callers that know it by this name.
training_runs_reap_stale = liveness.training_runs_reap_stale
STALE_RUN_AFTER = liveness.LOST_AFTER


def training_schedule_tick() -> list[TrainingRun]:
    """Re-send queued runs the broker never got, fail lost ones, then start a run for every project
    with at least ``min_new_ratings`` unused ratings and no active run."""
    training_runs_redispatch()
    training_runs_reap_stale()
    started = []
    for project in Project.objects.select_related("served_version"):
        if TrainingRun.objects.filter(project=project, status__in=["queued", "running"]).exists():
            continue
        if annotation_selectors.new_ratings(project=project).count() < project.min_new_ratings:
            continue
        try:
            started.append(training_run_create(project=project, trigger=TrainingRun.Trigger.SCHEDULE))
        except ApplicationError as exc:
            log.info("not starting a run for %s: %s", project.slug, exc.message)
    return started


def schedule_ensure(
    *, train_interval_s: int | None = None, pool_interval_s: int | None = None, reap_interval_s: int | None = None
) -> None:
    """Create the beat entries (database scheduler) if missing.

    Staff change the intervals in the Django admin afterwards; an explicit
    argument (or ``REWARDLOOP_TRAIN_INTERVAL_S`` passed by the caller)
    overwrites them. The lost-run reaper runs on the generation queue: the
    training worker may be the one that is gone.
    """
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, task, seconds, default, queue in [
        ("Start training runs", TRAIN_TASK_NAME, train_interval_s, settings.REWARDLOOP_TRAIN_INTERVAL_S, None),
        ("Refill completion pools", POOL_TASK_NAME, pool_interval_s, settings.REWARDLOOP_POOL_INTERVAL_S, None),
        ("Fail lost training runs", REAP_TASK_NAME, reap_interval_s, liveness.REAP_EVERY_S, "generation"),
    ]:
        existing = PeriodicTask.objects.filter(name=name).first()
        if existing and seconds is None:
            continue
        every, _ = IntervalSchedule.objects.get_or_create(every=seconds or default, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "interval": every, "enabled": True, "queue": queue}
        )
