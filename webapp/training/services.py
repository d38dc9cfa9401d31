"""Writes for training: creating, running (step by step), cancelling and scheduling runs.

A run is a pipeline of steps (batch → update → save → evaluate → promote;
:mod:`.pipeline` says what each does and what it hands to the next). Here:
claiming a step, recording its state, ending the run, sending the next step.

A run never touches the served version until its new weights are safely on
disk (written to a temporary folder, fsynced, renamed; sha256 recorded) and
registered. Any failure before that leaves the project exactly as it was.

This module names tasks by string and never imports ``tasks.py`` (which imports it).
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
from webapp.annotation.weights import rating_weights
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, ModelVersion, Project

from . import evaluation, liveness, overoptimisation, pipeline, reward_batch, selectors
from .models import STEP_ORDER, TrainingRun, TrainingStep

log = logging.getLogger(__name__)

# A queued run whose message the broker never accepted is re-sent by the schedule once it is this old
# (younger ones may still be sending).
REDISPATCH_AFTER = timedelta(seconds=10)
TRAIN_TASK_NAME = "webapp.training.tasks.training_schedule"
POOL_TASK_NAME = "webapp.annotation.tasks.pool_refill_all"
REAP_TASK_NAME = "webapp.training.tasks.training_runs_reap"
EXECUTE_TASK_NAME = "webapp.training.tasks.training_run_execute"
SAMPLES_TASK_NAME = "webapp.training.tasks.version_samples_ensure"


def comparison_samples_request(*, versions: list[ModelVersion], retry: str = "press Compare again") -> None:
    """Ask the training worker for the held-out completions each of ``versions`` still lacks
    (task :data:`SAMPLES_TASK_NAME`, one per incomplete version), for a side-by-side comparison.

    Nothing is stored here, so asking again is harmless.

    Raises:
        ApplicationError: the broker refused a task; the message names the versions and ends
            with ``retry`` (what the person should do once the broker is back).
    """
    unsent = [
        version
        for version in versions
        if not selectors.samples_complete(version=version)
        and not broker.task_send(SAMPLES_TASK_NAME, args=[version.pk])
    ]
    if unsent:
        raise ApplicationError(
            f"Could not ask the training worker for the held-out completions of "
            f"{' and '.join(f'v{v.number}' for v in unsent)}: the task queue (broker) is unreachable. "
            f"Nothing was queued; {retry} once it is back."
        )


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
            _steps_ensure(run)
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


def training_run_cancel(*, run: TrainingRun, user=None) -> TrainingRun:
    """Cancel a run: a queued one at once, a running one between steps at once, inside a step at its next checkpoint.

    Inside a step the run is only *asked* to stop (``cancel_requested_at``); the
    worker checks after every optimiser step, after the update, before and after
    evaluating, and under a lock on the run as it decides whether to serve.
    Between steps (a step done, none running) nothing is running to ask, so the run ends
    here, under the same lock a step takes to start. Stopped before the save, it
    writes no version; stopped later, its version is kept but never served (held
    back, with the reason). Either way the run ends cancelled. Audited.

    Raises:
        ApplicationError: the run has already finished.
    """
    now = timezone.now()
    between_steps = False
    with transaction.atomic():
        stopped = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.CANCELLED, cancel_requested_at=now, cancel_requested_by=user, finished_at=now
        )
        if stopped:
            liveness.steps_close(run_id=run.pk, running_to=TrainingStep.Status.CANCELLED)
        else:
            current = TrainingRun.objects.select_for_update().get(pk=run.pk)
            if current.status != TrainingRun.Status.RUNNING:
                raise ApplicationError(f"Run {run.pk} has already finished ({current.get_status_display().lower()}).")
            if current.cancel_requested_at is not None:
                return current  # asked already; asking twice changes nothing
            TrainingRun.objects.filter(pk=run.pk).update(cancel_requested_at=now, cancel_requested_by=user)
            between_steps = liveness.step_pending(run_id=run.pk) is not None
        policy_services.audit_record(
            project=run.project,
            actor=user,
            action=AuditEvent.Action.CANCEL,
            target=f"run {run.pk}",
            detail={"was": "queued" if stopped else "running"},
        )
    if between_steps:
        _run_end_cancelled(run_id=run.pk, why=f"cancelled between steps{f' by {user}' if user else ''}")
    run.refresh_from_db()
    if stopped:
        _log(run, f"cancelled before it started{f' by {user}' if user else ''}")
    return run


_log = liveness.run_log


def training_batch_build(*, project: Project, ratings: list[Rating], config):
    """Turn ratings into a :class:`pgcore.trainer.TrainBatch`.

    Each rated completion appears once; its reward is the mean of its
    ratings after per-annotator normalisation (statistics from every rating
    the annotator gave in this project, so a small batch does not decide
    someone's scale). Completions of one prompt share a group for the
    leave-one-out baseline, so the two completions of a pair share one.

    Scores: :func:`webapp.annotation.judgments.reward_score` (Likert ``(s - 3) / 2``,
    thumbs ±1, pairwise winner +1 / loser -1, tie 0 / 0, both bad -1 / -1, a ranking's
    place r of k ``(k-1-2r)/(k-1)``: the mean of the pairwise outcomes it implies; a rubric
    rating the weighted mean of its criteria's ``(s - 3) / 2``, with the weights it was given under).
    Each rating is scored in its own kind, so a project whose mode changed trains on all of them.

    Weights (:mod:`webapp.annotation.weights`, the rule reward-model fits apply too): each rating
    weighs its rater's gold weight (``gold_low_weight`` for an annotator below
    ``gold_min_accuracy`` after ``gold_min_answers`` gold answers, else 1) in its completion's
    mean, and the batch's ``weights`` (per completion, the mean source weight of its ratings
    times the largest gold weight among its raters) scale the completion's advantage.
    """
    from pgcore.rewards import RatingRecord, ratings_to_rewards
    from pgcore.trainer import TrainBatch

    from webapp.annotation.judgments import reward_score

    # Held-out prompts judge versions; their ratings (if any were stored) never train one. A production
    # answer that ended at once has no token to train on.
    skipped = {
        pk
        for pk, held_out, token_ids in Completion.objects.filter(pk__in={r.completion_id for r in ratings}).values_list(
            "pk", "prompt__held_out", "token_ids"
        )
        if held_out or not token_ids
    }
    completion_ids = sorted({r.completion_id for r in ratings} - skipped)
    if not completion_ids:
        raise ApplicationError("There are no ratings of training prompts to train on.")
    history = list(
        Rating.objects.filter(completion__project=project, completion__prompt__held_out=False).values_list(
            "completion_id",
            "annotator_id",
            "source",
            "score",
            "thumbs_up",
            "comparison__choice",
            "comparison__pair__completion_a_id",
            "rank",
            "ranking__order",
            "criteria",
        )
    )
    index = {cid: i for i, cid in enumerate(completion_ids)}
    extra: dict[int, int] = {}
    for cid, *_ in history:
        if cid not in index and cid not in extra:
            extra[cid] = len(index) + len(extra)
    production = Rating.Source.PRODUCTION
    weights_rule = rating_weights(project=project)  # gold and production weights: the one rule
    records = [
        RatingRecord(
            completion_index=index.get(cid, extra.get(cid)),
            # A person's production feedback is normalised apart from their annotation: another scale.
            annotator=f"{annotator}:production" if source == production else annotator,
            weight=weights_rule.in_mean(annotator),
            score=reward_score(
                score=score,
                thumbs_up=thumbs_up,
                choice=choice,
                is_completion_a=cid == anchor_id,
                rank=rank,
                n_ranked=len(order) if order is not None else None,
                criteria=criteria,
            ),
        )
        for cid, annotator, source, score, thumbs_up, choice, anchor_id, rank, order, criteria in history
    ]
    rewards = ratings_to_rewards(
        records,
        len(index) + len(extra),
        annotator_norm=config.annotator_norm,
        shrinkage=config.annotator_shrinkage,
    )[: len(index)]
    raters: list[list[tuple[int, str]]] = [[] for _ in index]
    for cid, annotator, source, *_ in history:
        if cid in index:
            raters[index[cid]].append((annotator, source))
    weights = [weights_rule.judgment(r) for r in raters]
    completions = Completion.objects.in_bulk(completion_ids)
    ordered = [completions[cid] for cid in completion_ids]
    return TrainBatch(
        prompt_ids=[list(c.prompt_token_ids) for c in ordered],
        completion_ids=[list(c.token_ids) for c in ordered],
        behaviour_logprobs=[list(c.behaviour_logprobs) for c in ordered],
        rewards=[float(x) for x in rewards.tolist()],
        group_ids=[c.prompt_id for c in ordered],
        weights=None if all(w == 1.0 for w in weights) else weights,
    )


def training_run_execute(*, run_id: int, worker: str = "") -> TrainingRun | None:
    """Run a queued training run to the end in this process, step after step (tests, benchmarks).

    Workers run the same steps one Celery task each (:func:`training_step_run`
    with ``chain=True``); this runs them in a loop with no messages. Returns the
    run, or None if it was not queued (a run is claimed once).
    """
    if not TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).exists():
        return None
    step: str | None = STEP_ORDER[0]
    while step is not None:
        step = training_step_run(run_id=run_id, step=step, worker=worker, chain=False)
    return TrainingRun.objects.get(pk=run_id)


def training_step_run(*, run_id: int, step: str, worker: str = "", chain: bool = True) -> str | None:
    """Run one step of a run's pipeline (called by the ``training`` tasks); returns the next step, or None.

    Idempotent and safe to deliver twice. A step runs only while the run is
    running (the first step also starts a queued run), the step is ``queued``
    and every step before it is ``done``; the claim is made under a lock on the
    run, so two workers never run one step. A ``done`` step is not run again:
    the message moves on (sends the next step if it is still queued). A cancel
    requested between steps ends the run here, before the step starts.

    While it runs the step's row says ``running`` with the attempt and the
    worker ("hostname:pid", also written on the run), a heartbeat thread stamps
    the run, and the run's ``stage`` says what it is doing (:mod:`.liveness`).
    On success the step is ``done`` and, with ``chain``, the next step's task
    is sent after commit; on a cancel the run ends ``cancelled``, on any error
    ``failed`` (the step ``cancelled``/``failed``, later steps ``skipped``). A
    run that ends removes its working folder; the served version changes only
    in the promote step.
    """
    claimed = _step_claim(run_id=run_id, step=step, worker=worker)
    if claimed is None:
        if not TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).exists():
            pipeline.trained_release()  # the run ended (cancelled before this step): nothing will take it
        return None
    if isinstance(claimed, str):  # done already: move on
        if chain:
            liveness.step_send(run_id=run_id, step=claimed)
        return claimed
    row = claimed
    pipeline.trained_release(except_run_id=run_id)  # a policy trained for another run is not coming back
    from pgcore.trainer import TrainingCancelled

    run = TrainingRun.objects.select_related("project__served_version", "parent_version", "result_version").get(pk=run_id)
    try:
        with liveness.Heartbeat(run.pk):
            config = pg_config_for(project=run.project, overrides=run.config)
            STEP_BODIES[step](run=run, config=config)
    except TrainingCancelled as exc:
        pipeline.trained_release()
        _run_end_cancelled(run_id=run.pk, why=str(exc))
        return None
    except Exception as exc:  # noqa: BLE001 - every failure must end the run cleanly
        pipeline.trained_release()
        log.exception("training run %s failed in step %s", run.pk, step)
        _run_end_failed(run_id=run.pk, exc=exc)
        return None
    now = timezone.now()
    next_step = None
    with transaction.atomic():
        TrainingStep.objects.filter(pk=row.pk, status=TrainingStep.Status.RUNNING).update(
            status=TrainingStep.Status.DONE, finished_at=now
        )
        current = TrainingRun.objects.select_for_update().get(pk=run_id)
        cancelled = current.status == TrainingRun.Status.RUNNING and current.cancel_requested_at is not None
        if current.status == TrainingRun.Status.RUNNING and not cancelled:
            TrainingRun.objects.filter(pk=run_id).update(heartbeat_at=now)
            next_step = STEP_ORDER[STEP_ORDER.index(step) + 1] if step != STEP_ORDER[-1] else None
    if cancelled or next_step is None:
        pipeline.trained_release()  # the run has ended here: no evaluate step will take it
    if cancelled:
        following = STEP_ORDER[STEP_ORDER.index(step) + 1]
        _run_end_cancelled(run_id=run_id, why=f"cancel requested; stopped after the {step} step, before {following}")
        return None
    if next_step is None:
        liveness.run_leftovers_remove(run)  # the run has ended: its working folder goes
        run_plots_queue(run_id=run_id)
        return None
    liveness.chaos_pause(f"after-{step}")
    if chain:
        liveness.step_send(run_id=run_id, step=next_step)
    return next_step


def _step_claim(*, run_id: int, step: str, worker: str) -> TrainingStep | str | None:
    """Under a lock on the run: the claimed step's row, the step to move on to (``step`` is done), or None."""
    if step not in STEP_ORDER:
        raise ValueError(f"unknown training step {step!r}; the steps are {', '.join(STEP_ORDER)}")
    now = timezone.now()
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return None
        if run.status == TrainingRun.Status.QUEUED and step == STEP_ORDER[0]:
            run.status, run.started_at = TrainingRun.Status.RUNNING, now
            TrainingRun.objects.filter(pk=run_id).update(status=run.status, started_at=now)
        if run.status != TrainingRun.Status.RUNNING:
            return None
        _steps_ensure(run)
        rows = {r.name: r for r in TrainingStep.objects.select_for_update().filter(run_id=run_id)}
        row = rows[step]
        if row.status == TrainingStep.Status.DONE:
            return liveness.step_pending(run_id=run_id)
        if row.status != TrainingStep.Status.QUEUED:
            return None  # running in another process, or ended
        if any(rows[name].status != TrainingStep.Status.DONE for name in STEP_ORDER[: STEP_ORDER.index(step)]):
            return None  # out of order: the earlier step's own message runs it
        cancel_asked = run.cancel_requested_at is not None
        if not cancel_asked:
            row.status, row.attempts, row.worker = TrainingStep.Status.RUNNING, row.attempts + 1, worker[:200]
            row.started_at, row.finished_at, row.error = now, None, ""
            row.save(update_fields=["status", "attempts", "worker", "started_at", "finished_at", "error"])
            TrainingRun.objects.filter(pk=run_id).update(heartbeat_at=now, worker=worker[:200])
    if cancel_asked:
        _run_end_cancelled(run_id=run_id, why=f"cancel requested; stopped before the {step} step")
        return None
    return row


def _steps_ensure(run: TrainingRun) -> None:
    """Create the run's step rows that are missing (all ``queued``)."""
    TrainingStep.objects.bulk_create(
        [TrainingStep(run=run, name=name, position=i) for i, name in enumerate(STEP_ORDER)], ignore_conflicts=True
    )


def _step_batch(*, run: TrainingRun, config) -> None:
    """The batch step: take the project's unused ratings, link them to the run, store the TrainBatch."""
    from pgcore.trainer import bf16_autocast_active

    liveness.stage_enter(run, TrainingRun.Stage.BATCHING)
    project = run.project
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
    if not config.use_lora and parent.kind == ModelVersion.Kind.LORA:
        raise ApplicationError("Full fine-tuning cannot continue from a LoRA version; promote a full or base version.")
    batch = training_batch_build(project=project, ratings=ratings, config=config)
    batch = reward_batch.batch_with_reward_model(run=run, project=project, parent=parent, human_batch=batch)
    pipeline.batch_write(run=run, batch=batch)


STEP_BODIES = {
    TrainingStep.Name.BATCH: _step_batch,
    TrainingStep.Name.UPDATE: pipeline.step_update,
    TrainingStep.Name.SAVE: pipeline.step_save,
    TrainingStep.Name.EVALUATE: pipeline.step_evaluate,
    TrainingStep.Name.PROMOTE: pipeline.step_promote,
}


def run_plots_queue(*, run_id: int) -> None:
    """Queue the drawing of what a run's end changes: its loss/KL curves, its reward-model scatter
    (reward-model runs) and the project's version plots.

    The generation worker draws them now, so the run page and the versions page find the
    files ready instead of drawing on first view. Never fails the run (a down broker is
    logged; the pages queue the drawing themselves when asked).
    """
    from webapp.policies import plotfiles, plotspecs

    run = TrainingRun.objects.select_related("project", "reward_model").filter(pk=run_id).first()
    if run is None:
        return
    try:
        if run.curve:
            plotfiles.plot_ensure(*selectors.run_curves_spec(run), slot=selectors.run_curves_slot(run))
        if run.reward_model_id:
            plotfiles.plot_ensure(*selectors.run_rm_vs_human_spec(run), slot=selectors.run_rm_vs_human_slot(run))
        plotspecs.version_plots_ensure(project=run.project)
    except Exception:  # noqa: BLE001 - plots are a view of the run, never a reason to fail it
        log.exception("could not queue the plots of run %s", run_id)


def _run_end_cancelled(*, run_id: int, why: str) -> None:
    """End a running run cancelled: steps closed, a version it wrote kept but never served, its files tidied."""
    with transaction.atomic():
        ended = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.CANCELLED, finished_at=timezone.now()
        )
        if not ended:
            return
        liveness.steps_close(run_id=run_id, running_to=TrainingStep.Status.CANCELLED, error=why)
        written = ModelVersion.objects.filter(produced_by=run_id).first()
        if written is not None:
            who = TrainingRun.objects.filter(pk=run_id).values_list("cancel_requested_by__username", flat=True).first()
            evaluation.version_hold_back(
                version=written,
                reasons=[f"Not served: run {run_id} was cancelled{f' by {who}' if who else ''} before promotion."],
            )
    run = TrainingRun.objects.select_related("project").get(pk=run_id)
    if written is not None:
        _log(run, f"cancelled: {why}; v{written.number} is kept but not served")
    else:
        _log(run, f"cancelled: {why}; no version written")
    liveness.run_leftovers_remove(run)
    run_plots_queue(run_id=run.pk)


def _run_end_failed(*, run_id: int, exc: Exception) -> None:
    """End a running run failed with ``exc``: steps closed, a version it wrote kept unserved with the reason."""
    message = exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}"
    ended = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
        status=TrainingRun.Status.FAILED, error=message, finished_at=timezone.now()
    )
    run = TrainingRun.objects.select_related("project").get(pk=run_id)
    if ended:
        liveness.steps_close(run_id=run_id, running_to=TrainingStep.Status.FAILED, error=message)
        _log(run, "failed:\n" + "".join(traceback.format_exception_only(type(exc), exc)).strip())
        # A version written before the failure (e.g. its evaluation broke) stays, unserved, with the reason.
        written = ModelVersion.objects.filter(produced_by=run_id).first()
        if written is not None:
            evaluation.version_hold_back(version=written, reasons=[f"Not served: the run failed after writing it ({message})."])
    liveness.run_leftovers_remove(run)
    run_plots_queue(run_id=run.pk)


# Kept here for callers that know it by this name.
training_runs_reap_stale = liveness.training_runs_reap_stale
STALE_RUN_AFTER = liveness.LOST_AFTER


def training_schedule_tick() -> list[TrainingRun]:
    """Re-send queued runs the broker never got, fail lost ones, decide on shadow candidates people
    have rated enough (:func:`.overoptimisation.shadow_candidates_recheck`), then start a run for
    every project with at least ``min_new_ratings`` unused ratings and no active run."""
    training_runs_redispatch()
    training_runs_reap_stale()
    try:
        overoptimisation.shadow_candidates_recheck()
    except Exception:  # noqa: BLE001 - a failed check (e.g. a corrupt reward model) never stops scheduling
        log.exception("the shadow candidates' gain check failed; trying again at the next tick")
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
