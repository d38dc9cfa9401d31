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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings

from webapp.annotation.judgments import reward_score
from webapp.annotation.models import Rating
from webapp.policies.models import ModelVersion

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
    """Mean human reward of each rated completion of ``version`` (reward units), any prompt."""
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
    """Scatter data for the run page: reward-model score against people's mean reward, per rated completion.

    Two series: the completions whose ratings the run trained on (of the parent; the reward
    model was fitted on them) and the rated completions of the version it produced (never
    fitted on: held out from the reward model). Only completions with a stored ``rm_score``.
    """
    series = {}
    groups = [("trained on (fitted)", Rating.objects.filter(training_runs=run))]
    if run.result_version_id:
        groups.append((f"v{run.result_version.number} (held out)", Rating.objects.filter(completion__model_version_id=run.result_version_id)))
    for label, ratings in groups:
        per_completion: dict[int, list[float]] = {}
        rm_scores: dict[int, float] = {}
        rows = ratings.filter(completion__rm_score__isnull=False).values_list(
            "completion_id", "completion__rm_score", "score", "thumbs_up", "comparison__choice",
            "comparison__pair__completion_a_id",
        )
        for cid, rm_score, score, thumbs_up, choice, anchor_id in rows:
            rm_scores[cid] = rm_score
            per_completion.setdefault(cid, []).append(
                reward_score(score=score, thumbs_up=thumbs_up, choice=choice, is_completion_a=cid == anchor_id)
            )
        ids = sorted(per_completion)
        series[label] = {
            "x": [round(rm_scores[c], 4) for c in ids],
            "y": [round(sum(per_completion[c]) / len(per_completion[c]), 4) for c in ids],
        }
    return series
