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

from webapp.annotation import selectors as annotation_selectors
from webapp.annotation.models import Completion, Rating
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, ModelVersion, Project

from .models import TrainingRun

log = logging.getLogger(__name__)

# A running run whose worker has not reported for this long is declared lost.
STALE_RUN_AFTER = timedelta(minutes=15)
TRAIN_TASK_NAME = "webapp.training.tasks.training_schedule"
POOL_TASK_NAME = "webapp.annotation.tasks.pool_refill_all"


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

    Raises:
        ApplicationError: no unused ratings, a bad override, or a run is
            already queued or running (refused by the database's
            one-active-run constraint, so two simultaneous requests cannot
            both succeed).
    """
    from . import tasks

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
            transaction.on_commit(lambda: tasks.training_run_execute.delay(run.pk))
    except IntegrityError as exc:
        raise ApplicationError("A training run is already queued or running for this project.") from exc
    return run


@transaction.atomic
def training_run_cancel(*, run: TrainingRun, user=None) -> TrainingRun:
    """Cancel a run: a queued run at once, a running one at its next minibatch.

    A running run is only *asked* to stop (``cancel_requested_at``); the
    worker checks after every optimiser step, stops, writes no version and
    marks the run cancelled. Audited.

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

    Scores: Likert ``(s - 3) / 2``, thumbs ±1, pairwise winner +1 / loser -1,
    tie 0 / 0, both bad -1 / -1 (``pgcore.rewards``).
    """
    from pgcore.rewards import RatingRecord, judgment_to_score, ratings_to_rewards
    from pgcore.trainer import TrainBatch

    def score_of(cid, score, thumbs_up, choice, anchor_id) -> float:
        return judgment_to_score(score=score, thumbs_up=thumbs_up, choice=choice, is_a=cid == anchor_id)

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
            score=score_of(cid, score, thumbs_up, choice, anchor_id),
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


def training_run_execute(*, run_id: int) -> TrainingRun | None:
    """Run a queued training run to the end (called by the ``training`` task).

    Idempotent: a run that is not queued any more is left alone.

    After every optimiser step the run's progress (epoch, step), loss/KL curve
    and log are written, and a cancel request is honoured: the update stops,
    nothing is saved, the run ends ``cancelled``.

    On success the new version's weights are written atomically and
    registered, then it completes the held-out prompts and the promotion guard
    decides: served, or kept but not served with the reasons on the run and
    the version. On any error the run is marked failed with the error and the
    served version is untouched.
    """
    from pgcore.policy import save_policy_atomic
    from pgcore.trainer import TrainingCancelled, bf16_autocast_active, update

    from webapp.annotation import tasks as annotation_tasks
    from webapp.policies.runtime import policy_load

    from . import evaluation

    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.RUNNING, started_at=now, heartbeat_at=now
    )
    if not claimed:
        return None
    run = TrainingRun.objects.select_related("project__served_version").get(pk=run_id)
    project = run.project
    try:
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

        metrics = update(policy, batch, config, on_step=on_step)
        if _cancel_requested(run.pk):
            raise TrainingCancelled("cancel requested; stopped before saving")
        out_dir = policy_services.version_weights_dir(project=project, name=f"run-{run.pk}")
        sha256 = save_policy_atomic(policy, out_dir)
        metrics = {k: float(v) for k, v in metrics.items()}
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
        evaluation.version_evaluate(version=version, policy=policy)
        del policy
        if parent.evaluated_at is None:
            evaluation.version_evaluate(version=parent)
        version.refresh_from_db()
        parent.refresh_from_db()
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
            if reasons:
                evaluation.version_hold_back(version=version, reasons=reasons)
            else:
                policy_services.version_promote(version=version, user=None, refill_pool=False)
                transaction.on_commit(lambda: annotation_tasks.pool_refill.delay(project.pk))
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
        _log(run, f"cancelled: {exc}; no version written")
        TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.CANCELLED, finished_at=timezone.now())
    except Exception as exc:  # noqa: BLE001 - every failure must end the run cleanly
        log.exception("training run %s failed", run.pk)
        message = exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}"
        _log(run, "failed:\n" + "".join(traceback.format_exception_only(type(exc), exc)).strip())
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.FAILED, error=message, finished_at=timezone.now()
        )
        # A version written before the failure (e.g. its evaluation broke) stays, unserved, with the reason.
        ModelVersion.objects.filter(produced_by=run.pk).exclude(pk=run.project.served_version_id).update(
            held_back_reason=f"Not served: the run failed after writing it ({message})."
        )
    run.refresh_from_db()
    return run


def training_runs_reap_stale(*, now=None) -> int:
    """Mark running runs whose worker stopped reporting as failed, freeing the project."""
    now = now or timezone.now()
    return TrainingRun.objects.filter(
        status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - STALE_RUN_AFTER
    ).update(
        status=TrainingRun.Status.FAILED,
        error="The worker running this run stopped reporting (killed or lost); no version was written.",
        finished_at=now,
    )


def training_schedule_tick() -> list[TrainingRun]:
    """Start a run for every project with at least ``min_new_ratings`` unused ratings and no active run."""
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


def schedule_ensure(*, train_interval_s: int | None = None, pool_interval_s: int | None = None) -> None:
    """Create the beat entries (database scheduler) if missing.

    Staff change the intervals in the Django admin afterwards; an explicit
    argument (or ``REWARDLOOP_TRAIN_INTERVAL_S`` passed by the caller)
    overwrites them.
    """
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, task, seconds, default in [
        ("Start training runs", TRAIN_TASK_NAME, train_interval_s, settings.REWARDLOOP_TRAIN_INTERVAL_S),
        ("Refill completion pools", POOL_TASK_NAME, pool_interval_s, settings.REWARDLOOP_POOL_INTERVAL_S),
    ]:
        existing = PeriodicTask.objects.filter(name=name).first()
        if existing and seconds is None:
            continue
        every, _ = IntervalSchedule.objects.get_or_create(every=seconds or default, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "interval": every, "enabled": True}
        )
