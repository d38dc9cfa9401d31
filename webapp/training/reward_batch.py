"""Policy updates on fresh samples scored by the reward model (``Project.reward_source = "reward_model"``).

The batch step of a run on such a project (:func:`.services.training_batch_build` builds
the human part first):

1. refits the project's reward model on every rating (:func:`webapp.rewards.services.reward_model_fit`);
   too few ratings, or a fit that fails for any other reason, leaves a line in the run's
   log and the run trains on the human ratings alone, as a human-only project does;
2. samples ``rm_samples_per_prompt`` (k) completions for each of ``REWARDLOOP_RM_FRESH_PROMPTS``
   training prompts, rated or not, from the parent version (the one fast sampler,
   ``pgcore.rollout.generate``, behaviour logprobs exact);
3. scores them pessimistically, ``reward = mean - c * std`` over the ensemble with
   ``c = rm_pessimism`` (reward units, like the human rewards; a lower confidence bound
   against over-optimising the reward model, as in Coste et al. 2024, "Reward model
   ensembles help mitigate overoptimization");
4. appends them to the human batch, each prompt's k samples a group of their own, so the
   update's leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024, RLOO) compares
   samples of one prompt under one scorer; the human-rated completions keep their groups
   and their human rewards (Christiano et al. 2017; Ziegler et al. 2019 train the policy
   on fresh samples scored by a model fitted on every label);
5. with ``Project.rm_trust``, weighs them by how far the reward model can be trusted
   (:func:`fresh_weight`: its cross-validated pairwise accuracy's lower bound, 0 at chance,
   1 from 0.8); below ``REWARDLOOP_RM_TRUST_MIN_WEIGHT`` (:func:`trust_min_weight`) nothing
   is sampled or scored at all; without it they weigh 1 as the human rows do.
"""

from __future__ import annotations

import logging
import random

from django.conf import settings

from webapp.annotation.models import Prompt
from webapp.errors import ApplicationError
from webapp.policies.models import Project, RewardSource

from . import liveness
from .models import TrainingRun

log = logging.getLogger(__name__)

FRESH_PROMPTS = 16
# Fresh samples that would weigh less than this are not sampled at all (``Project.rm_trust``).
TRUST_MIN_WEIGHT = 0.05


def fresh_prompts() -> int:
    """Training prompts sampled per reward-model update (setting ``REWARDLOOP_RM_FRESH_PROMPTS``)."""
    return int(getattr(settings, "REWARDLOOP_RM_FRESH_PROMPTS", FRESH_PROMPTS))


def trust_min_weight() -> float:
    """Smallest :func:`fresh_weight` worth sampling for (setting ``REWARDLOOP_RM_TRUST_MIN_WEIGHT``).

    The default, :data:`TRUST_MIN_WEIGHT` (0.05), lives here only: ``webapp/settings.py`` sets the
    setting only when the environment names it.

    Below it the run samples and scores no fresh completion and trains on the human ratings
    alone: ``P * k`` generations (16 prompts × 4 by default) cost more CPU than the whole human
    update, for advantages scaled to under 5% of a human row's. A weight of 0 never samples,
    whatever the setting.
    """
    return float(getattr(settings, "REWARDLOOP_RM_TRUST_MIN_WEIGHT", TRUST_MIN_WEIGHT))


def reward_model_for_run(*, run: TrainingRun, project: Project):
    """Refit the reward model for this run; the version, or None (human-only, with the reason logged).

    Never raises for a failed fit: the run then trains on human ratings alone.
    """
    from webapp.rewards import services as reward_services

    try:
        version = reward_services.reward_model_fit(project=project)
    except ApplicationError as exc:
        liveness.run_log(run, f"reward model: {exc.message} Training on human ratings only.")
        return None
    except Exception as exc:  # noqa: BLE001 - a failed fit never blocks human-only training
        log.exception("project %s: reward model fit failed", project.slug)
        liveness.run_log(run, f"reward model: the fit failed ({type(exc).__name__}: {exc}). Training on human ratings only.")
        return None
    pearson = version.metrics.get("held_out/pearson")
    quality = f", held-out Pearson {pearson:.2f}" if isinstance(pearson, float) else ""
    liveness.run_log(run, f"reward model RM{version.number} fitted on {version.n_judgments} judgments{quality}")
    return version


def fresh_batch_build(*, run: TrainingRun, project: Project, rm_version, parent, seed: int):
    """Sample and score fresh completions; a :class:`pgcore.trainer.TrainBatch` of ``P * k`` rows.

    Group ids are negative (``-1 - i`` for the i-th prompt) so they never meet a human
    group (prompt ids are positive).

    Raises:
        ApplicationError: the reward model's artefact is missing or corrupt (a clear error:
            the run fails, nothing is served), or the project has no training prompt.
    """
    import torch

    from pgcore.reward_model import RewardModelConfig
    from pgcore.rollout import generate
    from pgcore.trainer import TrainBatch

    from webapp.policies.runtime import policy_load
    from webapp.rewards import services as reward_services

    model = reward_services.reward_model_load(version=rm_version)  # ApplicationError when corrupt
    k = int(project.rm_samples_per_prompt)
    pool = list(Prompt.objects.filter(project=project, held_out=False).order_by("id").values_list("pk", "text"))
    if not pool:
        raise ApplicationError("The project has no training prompts to sample for the reward model.")
    chosen = random.Random(seed).sample(pool, min(fresh_prompts(), len(pool)))
    liveness.run_log(run, f"sampling {k} completions for each of {len(chosen)} prompts from v{parent.number}")
    policy = policy_load(parent, trainable=False)
    rollouts = generate(
        policy, [text for _, text in chosen for _ in range(k)], max_new_tokens=project.max_new_tokens, seed=seed
    )
    del policy
    config = RewardModelConfig.from_dict(rm_version.config)
    features = reward_services.features_compute(
        project=project,
        prompt_ids=[r.prompt_ids for r in rollouts],
        completion_ids=[r.completion_ids for r in rollouts],
        config=config,
    )
    mean, std = model.score(features)  # (P*k,), (P*k,)
    rewards = mean - float(project.rm_pessimism) * std
    if not torch.isfinite(rewards).all():
        raise ApplicationError(f"Reward model RM{rm_version.number} gave a non-finite score to a fresh sample.")
    liveness.run_log(
        run,
        f"scored {len(rollouts)} fresh samples with RM{rm_version.number}: mean {float(mean.mean()):+.3f}, "
        f"ensemble std {float(std.mean()):.3f}, pessimistic reward (c = {project.rm_pessimism:g}) "
        f"{float(rewards.mean()):+.3f}",
    )
    return TrainBatch(
        prompt_ids=[r.prompt_ids for r in rollouts],
        completion_ids=[r.completion_ids for r in rollouts],
        behaviour_logprobs=[r.behaviour_logprobs for r in rollouts],
        rewards=[float(x) for x in rewards.tolist()],
        group_ids=[-1 - i for i in range(len(chosen)) for _ in range(k)],
    )


def fresh_seed(run: TrainingRun) -> int:
    """The seed of ``run``'s fresh samples (which prompts, and their sampling): the run's PGConfig
    ``seed`` and how many runs of its project came before it. Not the run's database id, so a
    project's runs repeat for a seed whatever other projects did (the learning benchmark's
    variants share one database)."""
    earlier = TrainingRun.objects.filter(project_id=run.project_id, pk__lt=run.pk).count()
    return int(run.config.get("seed", 0)) * 1_000_003 + earlier


def fresh_weight(*, run: TrainingRun, project: Project, rm_version) -> float:
    """Weight of ``rm_version``'s fresh samples in this run's update (their advantages are multiplied by it).

    1 unless ``project.rm_trust``; then :func:`pgcore.reward_model.trust_weight` of the lower
    bound of the reward model's cross-validated pairwise accuracy (``cv/trust_accuracy_low`` of
    its metrics, :func:`webapp.rewards.services.reward_model_fit`): 0 at chance, 1 from 0.8.
    The reason goes to the run's log, and so does skipping the samples when the weight is
    below :func:`trust_min_weight`.
    """
    from pgcore.reward_model import trust_weight

    if not project.rm_trust:
        return 1.0
    metrics = rm_version.metrics or {}
    low, point = metrics.get("cv/trust_accuracy_low"), metrics.get("cv/trust_accuracy")
    weight = trust_weight(low)
    basis = metrics.get("cv/trust_basis")
    pairs = metrics.get("cv/within_prompt_pairs" if basis == "within_prompt" else "cv/n_pairs", 0)
    measured = (
        f"cross-validated pairwise accuracy {point:.2f} (lower bound {low:.2f}, {pairs:.0f} pairs, {basis})"
        if isinstance(low, float) and isinstance(point, float)
        else "no cross-validated pairwise accuracy (no pair of differing ratings)"
    )
    if weight == 0.0:
        liveness.run_log(
            run, f"reward model RM{rm_version.number}: {measured}, not above chance: training on human ratings only."
        )
    elif weight < trust_min_weight():
        liveness.run_log(
            run,
            f"reward model RM{rm_version.number}: {measured}: its fresh samples would weigh {weight:.3f}, "
            f"below {trust_min_weight():g}: nothing sampled, training on human ratings only.",
        )
    else:
        liveness.run_log(run, f"reward model RM{rm_version.number}: {measured}: its fresh samples weigh {weight:.2f}.")
    return weight


def batch_with_reward_model(*, run: TrainingRun, project: Project, parent, human_batch):
    """The run's batch: ``human_batch`` alone for a human-only project, when no reward model
    could be fitted or when it is trusted too little (:func:`fresh_weight` 0 or below
    :func:`trust_min_weight`: nothing is sampled or scored), else the human rows plus fresh
    reward-model-scored rows weighted by
    :func:`fresh_weight` (:func:`pgcore.trainer.batch_join`; the human rows keep their weights)."""
    from pgcore.trainer import batch_join

    if project.reward_source != RewardSource.REWARD_MODEL:
        return human_batch
    rm_version = reward_model_for_run(run=run, project=project)
    if rm_version is None:
        return human_batch
    weight = fresh_weight(run=run, project=project, rm_version=rm_version)
    if weight == 0.0 or weight < trust_min_weight():
        return human_batch
    fresh = fresh_batch_build(run=run, project=project, rm_version=rm_version, parent=parent, seed=fresh_seed(run))
    TrainingRun.objects.filter(pk=run.pk).update(reward_model=rm_version)
    return batch_join(human_batch, fresh, second_weight=weight)
