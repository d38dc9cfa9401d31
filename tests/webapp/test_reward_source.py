"""Runs of a project whose reward source is the reward model (issue 16, item 3), and its fallbacks."""

from __future__ import annotations


import pytest

from webapp.policies.models import RewardSource
from webapp.policies import artifacts
from webapp.rewards import services as reward_services
from webapp.rewards.models import RewardModelVersion
from webapp.training import reward_batch
from webapp.training import services as training_services
from webapp.training.models import TrainingRun

from tests.webapp.rewards_helpers import _rate_learnable, many_prompts  # noqa: F401


@pytest.fixture
def rm_project(project, settings):
    settings.REWARDLOOP_RM_FRESH_PROMPTS = 3
    project.reward_source = RewardSource.REWARD_MODEL
    project.rm_samples_per_prompt = 2
    project.save()
    return project


def _run(project):
    return training_services.training_run_create(project=project, trigger="manual")


def _human_batch(project, run):
    from pgcore.config import PGConfig

    return training_services.training_batch_build(
        project=project, ratings=list(project_ratings(project)), config=PGConfig.from_dict(project.pg_config)
    )


def _run_and_batch(project):
    """A new run of ``project``, its human batch and the batch it trains on."""
    run = _run(project)
    human = _human_batch(project, run)
    return run, human, reward_batch.batch_with_reward_model(
        run=run, project=project, parent=project.served_version, human_batch=human
    )


def project_ratings(project):
    from webapp.annotation.models import Rating

    return Rating.objects.filter(completion__project=project).select_related("completion")


def test_fresh_samples_join_the_human_batch_in_groups_of_k(rm_project, annotator, many_prompts):
    _rate_learnable(rm_project, many_prompts, annotator)
    run = _run(rm_project)
    human = _human_batch(rm_project, run)

    batch = reward_batch.batch_with_reward_model(
        run=run, project=rm_project, parent=rm_project.served_version, human_batch=human
    )

    assert len(batch) == len(human) + 3 * 2
    assert batch.rewards[: len(human)] == human.rewards  # human ratings kept as they were
    fresh_groups = batch.group_ids[len(human) :]
    assert fresh_groups == [-1, -1, -2, -2, -3, -3]
    assert not set(fresh_groups) & set(human.group_ids)
    run.refresh_from_db()
    assert run.reward_model == RewardModelVersion.objects.get()
    assert "scored 6 fresh samples with RM1" in run.log


def test_the_pessimism_lowers_each_fresh_reward_by_c_times_the_ensemble_spread(rm_project, annotator, many_prompts):
    _rate_learnable(rm_project, many_prompts, annotator)
    run = _run(rm_project)
    version = reward_services.reward_model_fit(project=rm_project)
    parent = rm_project.served_version
    rm_project.rm_pessimism = 0.0
    neutral = reward_batch.fresh_batch_build(run=run, project=rm_project, rm_version=version, parent=parent, seed=7)
    rm_project.rm_pessimism = 2.0
    cautious = reward_batch.fresh_batch_build(run=run, project=rm_project, rm_version=version, parent=parent, seed=7)

    assert neutral.completion_ids == cautious.completion_ids  # same seed, same samples
    gaps = [n - c for n, c in zip(neutral.rewards, cautious.rewards)]
    assert all(g >= 0 for g in gaps) and max(gaps) > 0
    # The gap is exactly 2 * std of the ensemble on those samples.
    from pgcore.reward_model import RewardModelConfig

    features = reward_services.features_compute(
        project=rm_project,
        prompt_ids=neutral.prompt_ids,
        completion_ids=neutral.completion_ids,
        config=RewardModelConfig.from_dict(version.config),
    )
    _mean, std = reward_services.reward_model_load(version=version).score(features)
    assert gaps == pytest.approx((2.0 * std).tolist(), abs=1e-5)


def test_too_few_ratings_trains_on_human_ratings_with_a_message(rm_project, annotator, many_prompts):
    _rate_learnable(rm_project, many_prompts[:4], annotator)
    run = _run(rm_project)
    human = _human_batch(rm_project, run)

    batch = reward_batch.batch_with_reward_model(
        run=run, project=rm_project, parent=rm_project.served_version, human_batch=human
    )

    assert batch is human
    run.refresh_from_db()
    assert "Too few ratings to fit a reward model" in run.log and "human ratings only" in run.log
    assert run.reward_model is None


def test_a_failed_fit_never_blocks_human_only_training(rm_project, annotator, many_prompts, monkeypatch):
    _rate_learnable(rm_project, many_prompts, annotator)

    def broken(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reward_services, "reward_model_fit", broken)
    run = training_services.training_run_execute(run_id=_run(rm_project).pk)

    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert "the fit failed (RuntimeError: disk full). Training on human ratings only." in run.log
    assert run.reward_model is None


def test_a_corrupt_reward_model_is_a_clear_error_and_nothing_is_served(rm_project, annotator, many_prompts, monkeypatch):
    _rate_learnable(rm_project, many_prompts, annotator)
    version = reward_services.reward_model_fit(project=rm_project)
    weights = artifacts.models_folder(version.artefact_path, published=True) / "reward_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")
    monkeypatch.setattr(reward_services, "reward_model_fit", lambda **kwargs: version)
    served = rm_project.served_version_id

    run = training_services.training_run_execute(run_id=_run(rm_project).pk)

    assert run.status == TrainingRun.Status.FAILED
    assert f"Reward model RM{version.number} cannot be loaded" in run.error
    rm_project.refresh_from_db()
    assert rm_project.served_version_id == served


def test_a_human_only_project_never_fits_or_samples(project, annotator, many_prompts, monkeypatch):
    _rate_learnable(project, many_prompts, annotator)
    monkeypatch.setattr(reward_services, "reward_model_fit", lambda **kwargs: pytest.fail("fitted"))
    run = _run(project)
    human = _human_batch(project, run)
    assert reward_batch.batch_with_reward_model(run=run, project=project, parent=project.served_version, human_batch=human) is human


def test_a_reward_model_run_trains_and_records_its_reward_model(rm_project, annotator, many_prompts):
    _rate_learnable(rm_project, many_prompts, annotator)

    run = training_services.training_run_execute(run_id=_run(rm_project).pk)

    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.reward_model is not None and run.reward_model.number == 1
    assert "sampling 2 completions for each of 3 prompts" in run.log
    assert run.result_version is not None


# ---- Project.rm_trust: the fresh samples weigh the reward model's cross-validated accuracy


def _rate_noise(project, prompts, annotator):
    """Four identical completions per prompt rated 5, 1, 5, 1: no reward model can order them."""
    from webapp.annotation.models import Rating

    from tests.webapp.rewards_helpers import GOOD, _completion

    for prompt in prompts:
        for score in (5, 1, 5, 1):
            Rating.objects.create(completion=_completion(project, prompt, GOOD, n=5), annotator=annotator, score=score)


def test_a_reward_model_at_chance_is_not_followed_and_nothing_is_sampled(rm_project, annotator, many_prompts, monkeypatch):
    rm_project.rm_trust = True
    rm_project.save()
    _rate_noise(rm_project, many_prompts, annotator)
    monkeypatch.setattr(reward_batch, "fresh_batch_build", lambda **kwargs: pytest.fail("sampled"))
    run = _run(rm_project)
    human = _human_batch(rm_project, run)

    batch = reward_batch.batch_with_reward_model(run=run, project=rm_project, parent=rm_project.served_version, human_batch=human)

    assert batch is human  # the update is the human-only one
    version = RewardModelVersion.objects.get()
    assert version.metrics["cv/trust_basis"] == "within_prompt"
    assert version.metrics["cv/trust_accuracy"] == pytest.approx(0.5)
    run.refresh_from_db()
    assert "not above chance: training on human ratings only." in run.log
    assert run.reward_model is None


def test_a_trusted_reward_model_s_samples_weigh_its_accuracy_and_people_s_ratings_keep_theirs(
    rm_project, annotator, many_prompts
):
    from pgcore.reward_model import trust_weight

    rm_project.rm_trust = True
    rm_project.save()
    _rate_learnable(rm_project, many_prompts, annotator)
    run = _run(rm_project)
    human = _human_batch(rm_project, run)

    batch = reward_batch.batch_with_reward_model(run=run, project=rm_project, parent=rm_project.served_version, human_batch=human)

    metrics = RewardModelVersion.objects.get().metrics
    weight = trust_weight(metrics["cv/trust_accuracy_low"])
    assert metrics["cv/trust_accuracy"] > 0.9 and 0 < weight <= 1
    assert len(batch) == len(human) + 3 * 2
    weights = batch.weights or [1.0] * len(batch)  # None: every row weighs 1
    assert weights[: len(human)] == (human.weights or [1.0] * len(human))
    assert weights[len(human) :] == pytest.approx([weight] * 6)
    run.refresh_from_db()
    assert f"its fresh samples weigh {weight:.2f}" in run.log


def test_a_weight_below_the_trust_threshold_samples_nothing_and_one_at_it_samples(
    rm_project, annotator, many_prompts, settings
):
    from pgcore.reward_model import trust_weight

    rm_project.rm_trust = True
    rm_project.save()
    _rate_learnable(rm_project, many_prompts, annotator)
    weight = trust_weight(reward_services.reward_model_fit(project=rm_project).metrics["cv/trust_accuracy_low"])
    assert 0 < weight <= 1  # the refits below measure the same accuracy on the same ratings

    settings.REWARDLOOP_RM_TRUST_MIN_WEIGHT = weight + 1e-6  # the weight is "tiny": just below the threshold
    skipped, human, batch = _run_and_batch(rm_project)

    assert batch is human
    skipped.refresh_from_db()
    assert f"its fresh samples would weigh {weight:.3f}" in skipped.log
    assert "nothing sampled, training on human ratings only." in skipped.log
    assert "sampling" not in skipped.log and "fresh samples with RM" not in skipped.log
    assert skipped.reward_model is None

    TrainingRun.objects.filter(pk=skipped.pk).update(status=TrainingRun.Status.SUCCEEDED)  # one run at a time
    settings.REWARDLOOP_RM_TRUST_MIN_WEIGHT = weight  # at the threshold: sampled and scored
    sampled, human, batch = _run_and_batch(rm_project)

    assert len(batch) == len(human) + 3 * 2
    weights = batch.weights or [1.0] * len(batch)  # None: every row weighs 1
    assert weights[len(human) :] == pytest.approx([weight] * 6)
    sampled.refresh_from_db()
    assert "sampling 2 completions for each of 3 prompts" in sampled.log
    assert "scored 6 fresh samples with RM" in sampled.log
    assert sampled.reward_model is not None


def test_without_rm_trust_the_fit_measures_no_cross_validation_and_samples_weigh_one(rm_project, annotator, many_prompts):
    _rate_learnable(rm_project, many_prompts, annotator)
    run = _run(rm_project)
    human = _human_batch(rm_project, run)

    batch = reward_batch.batch_with_reward_model(run=run, project=rm_project, parent=rm_project.served_version, human_batch=human)

    assert not any(k.startswith("cv/") for k in RewardModelVersion.objects.get().metrics)
    assert batch.weights is None or batch.weights == [1.0] * len(batch)


def test_ten_prompts_rated_twice_rest_the_trust_on_within_prompt_pairs_and_report_the_held_out_one(
    rm_project, annotator, many_prompts, settings
):
    """Two rated completions of each of 10 prompts: 10 within-prompt pairs are the trust's basis
    (it used to wait for 30, about 96 ratings), and the held-out split reports its own."""
    from pgcore.reward_model import accuracy_lower_bound

    settings.REWARDLOOP_RM_MIN_JUDGMENTS = 20
    rm_project.rm_trust = True
    rm_project.save()
    _rate_learnable(rm_project, many_prompts[:10], annotator)

    metrics = reward_services.reward_model_fit(project=rm_project).metrics

    assert metrics["cv/within_prompt_pairs"] == 10  # every prompt's pair is rated 5 and 1
    assert metrics["cv/trust_basis"] == "within_prompt"
    assert metrics["cv/trust_accuracy"] == metrics["cv/within_prompt_accuracy"] == pytest.approx(1.0)
    # The bootstrap of 10 pairs all right says 1.0; the Wilson bound on 10 pairs caps it.
    assert metrics["cv/trust_accuracy_low"] == pytest.approx(accuracy_lower_bound(1.0, 10)) == pytest.approx(0.859, abs=1e-3)
    held_out = metrics["held_out/n_ratings"] // 2  # held-out prompts, two ratings each
    assert metrics["held_out/within_prompt_pairs"] == held_out
    assert metrics["held_out/within_prompt_accuracy"] == (pytest.approx(1.0) if held_out else None)
