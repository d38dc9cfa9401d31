"""The over-optimisation guard: does the reward model's predicted gain hold up with people?

A policy trained against a learned reward can raise the reward model's score while
people like its outputs no better, or worse (Gao et al. 2023, "Scaling laws for reward
model overoptimization"; Ziegler et al. 2019 saw it with too little KL penalty). So a
version trained with a reward model (``TrainingRun.reward_model``) is checked before it
is served:

- **predicted gain**: the reward model's mean score of the version's held-out samples
  (:class:`.models.VersionSample`, the same prompts and seed for every version) minus
  its parent's, in reward units;
- **human gain**: people's mean reward (``annotation.judgments.reward_score``: Likert
  ``(s - 3) / 2``, thumbs ±1, pairwise ±1) over completions of the version minus over
  completions of its parent, each completion's ratings averaged first. Counted only when
  both have at least ``REWARDLOOP_GUARD_MIN_HUMAN`` rated completions.

When both exist and the predicted gain exceeds the human gain by more than
``REWARDLOOP_GUARD_RM_GAP`` (reward units), the version is held back with the reason.

People rarely rate a new version's outputs while it is not served, so the guard
would seldom have the human gain when the run ends. With ``Project.shadow_share`` > 0
such a version waits instead (:func:`shadow_wait_reason`): it becomes the project's
shadow candidate (``Project.shadow_version``), whose completions the annotation queue
mixes in blind at that share, and :func:`shadow_candidates_recheck` (each training
schedule tick) decides once people have rated enough of them: held back when the two
gains part, else served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings

from django.db import transaction

from webapp.annotation.models import Rating
from webapp.errors import ApplicationError
from webapp.policies.models import ModelVersion, Project

from .models import TrainingRun, VersionSample

log = logging.getLogger(__name__)

MIN_HUMAN = 8  # rated completions per version before people's ratings can overrule the reward model
RM_GAP = 0.25  # reward units (half a Likert point) by which the prediction may exceed what people saw


def min_human() -> int:
    return int(getattr(settings, "REWARDLOOP_GUARD_MIN_HUMAN", MIN_HUMAN))


def rm_gap() -> float:
    return float(getattr(settings, "REWARDLOOP_GUARD_RM_GAP", RM_GAP))


@dataclass
class GainCheck:
    predicted_gain: float | None = None  # reward model: version's held-out samples minus the parent's
    human_gain: float | None = None  # people: version's rated completions minus the parent's
    n_human: tuple[int, int] = (0, 0)  # rated completions (version, parent)
    reasons: list[str] = field(default_factory=list)

    def metrics(self) -> dict:
        out = {"guard/rm_n_human_version": float(self.n_human[0]), "guard/rm_n_human_parent": float(self.n_human[1])}
        if self.predicted_gain is not None:
            out["guard/rm_predicted_gain"] = self.predicted_gain
        if self.human_gain is not None:
            out["guard/rm_human_gain"] = self.human_gain
        return out


def human_rewards(*, version: ModelVersion) -> list[float]:
    """Mean human reward of each rated completion of ``version`` (reward units), any prompt. Worker only (torch)."""
    from webapp.annotation.judgments import reward_score

    per_completion: dict[int, list[float]] = {}
    rows = Rating.objects.filter(completion__model_version=version).values_list(
        "completion_id", "score", "thumbs_up", "comparison__choice", "comparison__pair__completion_a_id"
    )
    for cid, score, thumbs_up, choice, anchor_id in rows:
        per_completion.setdefault(cid, []).append(
            reward_score(score=score, thumbs_up=thumbs_up, choice=choice, is_completion_a=cid == anchor_id)
        )
    return [sum(v) / len(v) for v in per_completion.values()]


def _predicted_mean(*, rm_version, version: ModelVersion, prompt_ids: list[int]) -> float | None:
    """The reward model's mean score of ``version``'s held-out samples on ``prompt_ids``."""
    from pgcore.reward_model import RewardModelConfig

    from webapp.rewards import services as reward_services

    samples = list(VersionSample.objects.filter(version=version, prompt_id__in=prompt_ids).select_related("prompt"))
    samples = [s for s in samples if s.token_ids]
    if not samples:
        return None
    model = reward_services.reward_model_load(version=rm_version)
    features = reward_services.features_compute(
        project=version.project,
        prompt_texts=[s.prompt.text for s in samples],
        completion_ids=[list(s.token_ids) for s in samples],
        config=RewardModelConfig.from_dict(rm_version.config),
    )
    mean, _std = model.score(features)
    return float(mean.mean())


def rm_gain_check(*, run: TrainingRun, version: ModelVersion, parent: ModelVersion) -> GainCheck:
    """Compare the gain the run's reward model predicts for ``version`` with people's ratings of it.

    Returns a :class:`GainCheck`; ``reasons`` is empty unless both gains exist and they part
    by more than :func:`rm_gap`. A run without a reward model is not checked.

    Raises:
        ApplicationError: the reward model's artefact is missing or corrupt.
    """
    check = GainCheck()
    if run.reward_model_id is None:
        return check
    shared = set(VersionSample.objects.filter(version=version).values_list("prompt_id", flat=True)) & set(
        VersionSample.objects.filter(version=parent).values_list("prompt_id", flat=True)
    )
    if shared:
        new = _predicted_mean(rm_version=run.reward_model, version=version, prompt_ids=sorted(shared))
        old = _predicted_mean(rm_version=run.reward_model, version=parent, prompt_ids=sorted(shared))
        if new is not None and old is not None:
            check.predicted_gain = new - old
    mine, theirs = human_rewards(version=version), human_rewards(version=parent)
    check.n_human = (len(mine), len(theirs))
    if len(mine) >= min_human() and len(theirs) >= min_human():
        check.human_gain = sum(mine) / len(mine) - sum(theirs) / len(theirs)
    if check.predicted_gain is not None and check.human_gain is not None:
        if check.predicted_gain - check.human_gain > rm_gap():
            check.reasons.append(
                f"The reward model RM{run.reward_model.number} predicts a gain of {check.predicted_gain:+.2f} "
                f"over v{parent.number} on held-out prompts, but people's ratings of v{version.number}'s outputs "
                f"show {check.human_gain:+.2f} ({len(mine)} rated completions, against {len(theirs)} of "
                f"v{parent.number}): the policy may be exploiting the reward model."
            )
    return check


def rm_vs_human_points(*, run: TrainingRun) -> dict:
    """Scatter data for the run page: reward-model score (x) against people's rating (y) per rated completion.

    ``y`` is the rating's own level (``annotation.judgments.level``: Likert 1–5, thumbs
    1/0; pairwise decisions have none and are left out), averaged over the completion's
    ratings. Two series: the completions whose ratings the run trained on (the reward
    model was fitted on them) and the rated completions of the version it produced (never
    fitted on). Only completions with a stored ``rm_score``. Reads the database only
    (web processes never import torch).
    """
    from webapp.annotation.judgments import level

    groups = [("ratings trained on (fitted)", Rating.objects.filter(training_runs=run))]
    if run.result_version_id:
        groups.append(
            (
                f"v{run.result_version.number}'s outputs (held out)",
                Rating.objects.filter(completion__model_version_id=run.result_version_id),
            )
        )
    series = {}
    for label, ratings in groups:
        per_completion: dict[int, list[float]] = {}
        rm_scores: dict[int, float] = {}
        rows = ratings.filter(completion__rm_score__isnull=False).values_list(
            "completion_id", "completion__rm_score", "score", "thumbs_up"
        )
        for cid, rm_score, score, thumbs_up in rows:
            value = level(score=score, thumbs_up=thumbs_up)
            if value is None:
                continue
            rm_scores[cid] = rm_score
            per_completion.setdefault(cid, []).append(float(value))
        ids = sorted(per_completion)
        series[label] = {
            "x": [round(rm_scores[c], 4) for c in ids],
            "y": [round(sum(per_completion[c]) / len(per_completion[c]), 4) for c in ids],
        }
    return series


def shadow_wait_reason(*, run: TrainingRun, project: Project, version: ModelVersion, check: GainCheck) -> str:
    """Why ``version`` should wait unserved for people's ratings through the shadow queue; "" when not.

    It waits when the run trained with a reward model, the reward model predicted a gain
    (there were held-out samples), people have not rated enough of the version's outputs
    for a human gain yet, and the project's ``shadow_share`` is above 0.
    """
    if run.reward_model_id is None or check.predicted_gain is None or check.human_gain is not None:
        return ""
    if project.shadow_share <= 0:
        return ""
    return (
        f"Waiting for people's ratings of v{version.number}'s outputs to check the reward model's predicted gain "
        f"({check.n_human[0]} of {min_human()} rated so far; the shadow queue mixes them into "
        f"{project.shadow_share:.0%} of the items served, blind)."
    )


def shadow_candidates_recheck() -> list[tuple[str, int, str]]:
    """Decide on every project's shadow candidate that people have now rated enough.

    For each project with ``shadow_version`` set: a candidate that is no longer newer than
    the served version, was held back meanwhile, or has no reward-model run is simply
    dropped from the shadow queue. Otherwise, once it has :func:`min_human` rated
    completions, :func:`rm_gain_check` runs again with those ratings (the shadow queue's
    and any other); the gains recorded on the version and its run, and then the version
    is held back with the reason, or served (``version_promote``; a version that still
    has to win the arena stays unserved). Leaves the shadow queue either way. Worker only
    (torch). Returns ``(project slug, version number, "held back" | "served" | "waiting for
    the arena" | "dropped")`` for each decision taken.
    """
    from webapp.policies import services as policy_services

    from . import evaluation, liveness

    decided = []
    for project in Project.objects.filter(shadow_version__isnull=False).select_related("shadow_version", "served_version"):
        version, served = project.shadow_version, project.served_version
        run = (
            TrainingRun.objects.filter(result_version=version, reward_model__isnull=False)
            .select_related("reward_model", "parent_version")
            .order_by("-pk")
            .first()
        )
        if run is None or version.held_back_reason or served is None or version.number <= served.number:
            _shadow_clear(project=project, version=version)
            decided.append((project.slug, version.number, "dropped"))
            continue
        if len(human_rewards(version=version)) < min_human():
            continue
        check = rm_gain_check(run=run, version=version, parent=run.parent_version)
        if check.human_gain is None:  # the parent has too few rated completions yet
            continue
        TrainingRun.objects.filter(pk=run.pk).update(metrics={**run.metrics, **check.metrics()})
        ModelVersion.objects.filter(pk=version.pk).update(metrics={**(version.metrics or {}), **check.metrics()})
        liveness.run_log(
            run,
            f"reward-model gain check with the shadow queue's ratings: predicted {check.predicted_gain:+.3f}, "
            f"people {check.human_gain:+.3f} ({check.n_human[0]} rated completions of v{version.number})",
        )
        _shadow_clear(project=project, version=version)
        if check.reasons:
            evaluation.version_hold_back(version=version, reasons=check.reasons)
            TrainingRun.objects.filter(pk=run.pk).update(held_back_reason=" ".join(check.reasons))
            liveness.run_log(run, f"v{version.number} kept but NOT served: {' '.join(check.reasons)}")
            decided.append((project.slug, version.number, "held back"))
            continue
        try:
            with transaction.atomic():
                policy_services.version_promote(version=version, user=None, refill_pool=True)
                TrainingRun.objects.filter(pk=run.pk).update(promoted=True, held_back_reason="")
        except ApplicationError as exc:  # e.g. it must still win the arena: staff serve it then
            TrainingRun.objects.filter(pk=run.pk).update(held_back_reason=exc.message)
            liveness.run_log(run, f"v{version.number} passed the reward-model gain check but waits: {exc.message}")
            decided.append((project.slug, version.number, "waiting for the arena"))
            continue
        liveness.run_log(run, f"v{version.number} passed the reward-model gain check with people's ratings and is served")
        decided.append((project.slug, version.number, "served"))
    return decided


def _shadow_clear(*, project: Project, version: ModelVersion) -> None:
    """Take ``version`` out of the shadow queue (only if it is still the project's shadow candidate);
    its unrated items are retired with it, so the annotators' queue, which offers every version's
    items not retired, never offers a version that is not served (serving it revives them)."""
    from webapp.annotation.services import completions_retire_version

    with transaction.atomic():
        if Project.objects.filter(pk=project.pk, shadow_version=version).update(shadow_version=None):
            completions_retire_version(project=project, version=version)
