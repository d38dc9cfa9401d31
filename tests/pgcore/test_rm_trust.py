"""How far a policy update follows the reward model: trust weights from its cross-validated accuracy (issue 16)."""

import math

import pytest
import torch

from pgcore.config import PGConfig, RewardModelConfig
from pgcore.policy import load_policy
from pgcore.reward_model import (
    Judgments,
    accuracy_lower_bound,
    cross_validated_accuracy,
    effective_pairs,
    pairwise_accuracy,
    trust_weight,
    within_prompt_accuracy,
)
from pgcore.rollout import generate
from pgcore.trainer import TrainBatch, batch_join, update

# A closed-form head with a fixed penalty: the fits of the cross-validation take milliseconds.
RIDGE = RewardModelConfig(head="ridge", ridge_alpha=1.0, pca_dim=0)


@pytest.mark.parametrize(
    "accuracy, weight",
    [(None, 0.0), (0.3, 0.0), (0.5, 0.0), (0.56, 0.2), (0.65, 0.5), (0.8, 1.0), (0.95, 1.0)],
)
def test_the_weight_is_zero_at_chance_and_rises_linearly_to_one_at_0_8(accuracy, weight):
    assert trust_weight(accuracy) == pytest.approx(weight)


def test_the_ramp_takes_other_ends_and_refuses_nonsense():
    assert trust_weight(0.7, chance=0.6, full=0.9) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="chance"):
        trust_weight(0.7, chance=0.8, full=0.8)
    with pytest.raises(ValueError, match="finite"):
        trust_weight(math.nan)


def _ratings(n_prompts, per_prompt, learnable, seed=0):
    """Feature rows of ``per_prompt`` rated completions per prompt; the rating follows feature 0,
    or (not learnable) is drawn independently of every feature."""
    g = torch.Generator().manual_seed(seed)
    n = n_prompts * per_prompt
    features = torch.randn(n, 16, generator=g)
    signal = features[:, 0] if learnable else torch.randn(n, generator=g)
    target = (signal + 0.3 * torch.randn(n, generator=g)).round(decimals=1)
    groups = torch.arange(n) // per_prompt
    return features, Judgments(torch.arange(n), target), groups


def test_a_learnable_rating_is_ordered_right_well_above_chance_with_confidence():
    features, judgments, groups = _ratings(40, 2, learnable=True)

    out = cross_validated_accuracy(features, judgments, groups, RIDGE)

    assert out["cv/folds"] == 5
    assert out["cv/pairwise_accuracy"] > 0.75
    assert 0.5 < out["cv/pairwise_accuracy_low"] < out["cv/pairwise_accuracy"]
    # 40 prompts with 2 rated completions each: at most 40 within-prompt pairs, and they are the basis.
    assert out["cv/trust_basis"] == "within_prompt"
    assert 30 <= out["cv/within_prompt_pairs"] <= 40
    assert out["cv/trust_accuracy_low"] == out["cv/within_prompt_accuracy_low"]
    assert trust_weight(out["cv/trust_accuracy_low"]) > 0


def test_a_rating_the_features_do_not_carry_gives_no_trust():
    features, judgments, groups = _ratings(40, 2, learnable=False)

    out = cross_validated_accuracy(features, judgments, groups, RIDGE)

    assert out["cv/trust_accuracy_low"] < 0.5
    assert trust_weight(out["cv/trust_accuracy_low"]) == 0.0


def test_one_rating_per_prompt_falls_back_on_all_pairs_of_a_fold():
    features, judgments, groups = _ratings(60, 1, learnable=True)

    out = cross_validated_accuracy(features, judgments, groups, RIDGE)

    assert out["cv/within_prompt_pairs"] == 0 and out["cv/within_prompt_accuracy"] is None
    assert out["cv/trust_basis"] == "all_pairs"
    # Pairs only within a fold: 5 folds of 12 ratings, 66 pairs each (fewer where ratings tie).
    assert 0 < out["cv/n_pairs"] <= 5 * 66
    assert out["cv/trust_accuracy"] == out["cv/pairwise_accuracy"] > 0.75


def test_comparisons_count_as_within_prompt_pairs_and_identical_rows_as_chance():
    # Two completions per prompt with the same features: no model can order them, so every
    # decided comparison is a tie in prediction (one half).
    row = torch.randn(1, 8)
    features = row.repeat(40, 1)
    n = 20
    judgments = Judgments(
        pair_a=torch.arange(0, 2 * n, 2), pair_b=torch.arange(1, 2 * n, 2), pair_target=torch.ones(n)
    )
    groups = torch.arange(2 * n) // 2

    out = cross_validated_accuracy(features, judgments, groups, RIDGE)

    assert out["cv/within_prompt_pairs"] == out["cv/n_pairs"] == n
    assert out["cv/within_prompt_accuracy"] == pytest.approx(0.5)
    assert trust_weight(out["cv/trust_accuracy_low"]) == 0.0


# ---- within-prompt accuracy and its lower bound, by hand


# Three prompts, two rated completions each. Prompt 0: ordered right (1). Prompt 1: predicted
# tie (1/2). Prompt 2: ordered wrong (0). Pairs across prompts do not count.
PRED = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.3, 0.2])
TARGET = torch.tensor([2.0, 1.0, 3.0, 1.0, 1.0, 2.0])
GROUPS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_within_prompt_accuracy_counts_only_pairs_of_one_prompt():
    assert within_prompt_accuracy(PRED, TARGET, GROUPS) == (pytest.approx((1 + 0.5 + 0) / 3), 3)
    # Over all 15 pairs (13 differ in target) the same predictions score otherwise.
    assert pairwise_accuracy(PRED, TARGET) != pytest.approx(0.5)


def test_within_prompt_accuracy_weighs_each_pair_by_its_two_ratings_and_skips_ties():
    weight = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0, 0.0])  # prompt 1's pair weighs 2, prompt 2's 0
    assert within_prompt_accuracy(PRED, TARGET, GROUPS, weight) == (pytest.approx((1 * 1 + 2 * 0.5) / 3), 3)
    tied = torch.tensor([2.0, 1.0, 3.0, 3.0, 1.0, 1.0])  # prompts 1 and 2 rated alike: no pair
    assert within_prompt_accuracy(PRED, tied, GROUPS) == (1.0, 1)


def test_within_prompt_accuracy_without_a_pair_is_none_and_refuses_ragged_input():
    assert within_prompt_accuracy(PRED, TARGET, torch.arange(6)) == (None, 0)  # one completion per prompt
    with pytest.raises(ValueError, match="one entry per completion"):
        within_prompt_accuracy(PRED, TARGET, GROUPS[:-1])


Z90 = 1.2815515655446004  # the standard normal's 90th percentile


@pytest.mark.parametrize(
    "accuracy, n, bound",
    [
        (1.0, 8, 1 / (1 + Z90**2 / 8)),  # p = 1: the centre minus the spread is exactly 1 -> 0.8297
        (0.0, 5, 0.0),  # p = 0: the centre equals the spread
        # p = 3/4, n = 8: (0.75 + z^2/16 - z sqrt(0.75 * 0.25 / 8 + z^2 / 256)) / (1 + z^2 / 8)
        (0.75, 8, (0.75 + Z90**2 / 16 - Z90 * math.sqrt(0.75 * 0.25 / 8 + Z90**2 / 256)) / (1 + Z90**2 / 8)),
        (None, 8, None),
        (0.9, 0, None),
    ],
)
def test_the_wilson_bound_matches_the_hand_computed_values(accuracy, n, bound):
    assert accuracy_lower_bound(accuracy, n) == (None if bound is None else pytest.approx(bound))


def test_the_wilson_bound_tightens_with_pairs_and_refuses_nonsense():
    assert accuracy_lower_bound(0.75, 8) == pytest.approx(0.5237, abs=1e-4)  # by hand: 0.63122 / 1.20530
    assert accuracy_lower_bound(0.75, 8) < accuracy_lower_bound(0.75, 80) < 0.75
    with pytest.raises(ValueError, match="accuracy"):
        accuracy_lower_bound(1.2, 8)
    with pytest.raises(ValueError, match="quantile"):
        accuracy_lower_bound(0.7, 8, quantile=0.0)


@pytest.mark.parametrize(
    "weights, n",
    [
        ([1.0] * 5, 5.0),  # equal weights: the pair count
        ([2.0] * 5, 5.0),  # whatever the common weight
        ([4.0], 1.0),
        ([1.0] * 11 + [4.0], 15**2 / 27),  # sum 15, sum of squares 11 + 16 = 27 -> 8.33
        ([0.0, 0.0], 0.0),  # no weighted pair
    ],
)
def test_the_effective_number_of_pairs_matches_the_hand_computed_values(weights, n):
    w = torch.tensor(weights, dtype=torch.float64)
    assert effective_pairs(float(w.sum()), float((w * w).sum())) == pytest.approx(n)


def test_the_effective_number_of_pairs_refuses_negative_sums():
    with pytest.raises(ValueError, match=">= 0"):
        effective_pairs(-1.0, 1.0)


def test_the_wilson_bound_of_weighted_pairs_counts_their_effective_number():
    # 20 comparisons of identical rows: every one is a tie in prediction, so the accuracy and each
    # bootstrap resample are exactly 0.5 and the lower bound is the Wilson bound. Ten weigh 1 and
    # ten weigh 3: sum 40, sum of squares 100, so 16 effective pairs, not 20.
    features = torch.randn(1, 8).repeat(40, 1)
    n = 20
    weights = torch.tensor([1.0, 3.0]).repeat(n // 2)
    judgments = Judgments(
        pair_a=torch.arange(0, 2 * n, 2), pair_b=torch.arange(1, 2 * n, 2), pair_target=torch.ones(n),
        pair_weight=weights,
    )
    groups = torch.arange(2 * n) // 2

    out = cross_validated_accuracy(features, judgments, groups, RIDGE)

    assert out["cv/within_prompt_pairs"] == n
    assert out["cv/within_prompt_effective_pairs"] == pytest.approx(16.0)
    assert out["cv/within_prompt_accuracy"] == pytest.approx(0.5)
    # (0.5 + z^2/32 - z sqrt(0.25/16 + z^2/1024)) / (1 + z^2/16) = 0.3474; 20 pairs would give 0.3623.
    by_hand = (0.5 + Z90**2 / 32 - Z90 * math.sqrt(0.25 / 16 + Z90**2 / 1024)) / (1 + Z90**2 / 16)
    assert out["cv/within_prompt_accuracy_low"] == pytest.approx(by_hand)
    assert out["cv/within_prompt_accuracy_low"] < accuracy_lower_bound(0.5, n)


def test_a_dozen_prompts_rated_twice_already_rest_the_trust_on_within_prompt_pairs():
    # 12 prompts x 2 completions: at most 12 within-prompt pairs, fewer than the 30 it used to wait for.
    features, judgments, groups = _ratings(12, 2, learnable=True)

    out = cross_validated_accuracy(features, judgments, groups, RIDGE)

    assert 8 <= out["cv/within_prompt_pairs"] <= 12
    assert out["cv/trust_basis"] == "within_prompt"
    wilson = accuracy_lower_bound(out["cv/within_prompt_accuracy"], out["cv/within_prompt_pairs"])
    assert out["cv/trust_accuracy_low"] == out["cv/within_prompt_accuracy_low"] <= wilson


def test_the_estimate_refuses_one_fold_and_mismatched_groups():
    features, judgments, groups = _ratings(10, 2, learnable=True)
    with pytest.raises(ValueError, match="folds"):
        cross_validated_accuracy(features, judgments, groups, RIDGE, folds=1)
    with pytest.raises(ValueError, match="groups"):
        cross_validated_accuracy(features, judgments, groups[:-1], RIDGE)


def _rollout_batch(policy, prompts, rewards, groups, seed, weights=None):
    rollouts = generate(policy, prompts, max_new_tokens=6, seed=seed, precision="fp32")
    return TrainBatch(
        prompt_ids=[r.prompt_ids for r in rollouts],
        completion_ids=[r.completion_ids for r in rollouts],
        behaviour_logprobs=[r.behaviour_logprobs for r in rollouts],
        rewards=rewards,
        group_ids=groups,
        weights=weights,
    )


def test_joined_rows_keep_their_weights_and_the_second_part_is_scaled(lora_policy):
    human = _rollout_batch(lora_policy, ["a", "b"], [1.0, -1.0], [1, 2], seed=0, weights=[1.0, 0.25])
    fresh = _rollout_batch(lora_policy, ["c", "c"], [0.3, -0.2], [-1, -1], seed=1)

    joined = batch_join(human, fresh, second_weight=0.4)

    assert joined.weights == pytest.approx([1.0, 0.25, 0.4, 0.4])
    assert joined.rewards == [1.0, -1.0, 0.3, -0.2]
    assert joined.group_ids == [1, 2, -1, -1]
    assert batch_join(human, fresh).weights == [1.0, 0.25, 1.0, 1.0]  # the human gold weights survive
    plain = _rollout_batch(lora_policy, ["a"], [1.0], [1], seed=0)
    assert batch_join(plain, fresh).weights is None  # all ones: as before, no weights
    with pytest.raises(ValueError, match="second_weight"):
        batch_join(human, fresh, second_weight=-0.1)


def test_at_weight_zero_the_update_is_exactly_the_human_only_one(tiny_path, fp32_config):
    config = PGConfig(lr=1e-3, epochs=1, bf16_autocast=False, minibatch_size=8)
    human_policy = load_policy(tiny_path, config=fp32_config, trainable=True)
    joined_policy = load_policy(tiny_path, config=fp32_config, trainable=True)
    human = _rollout_batch(human_policy, ["a", "a", "b"], [1.0, -1.0, 0.5], [1, 1, 2], seed=0)
    fresh = _rollout_batch(human_policy, ["c", "c", "d", "d"], [2.0, -2.0, 1.0, -1.0], [-1, -1, -2, -2], seed=1)

    joined = batch_join(human, fresh, second_weight=0.0)
    alone = update(human_policy, human, config)
    together = update(joined_policy, joined, config)

    assert len(joined) == len(human)
    for key in ("losses/pg_loss", "losses/total", "objective/kl"):
        assert together[key] == alone[key]
    for a, b in zip(human_policy.trainable_parameters, joined_policy.trainable_parameters):
        assert torch.equal(a, b)
    # Kept at weight 0 instead, the fresh rows would still change the update (token means, KL).
    kept = TrainBatch(**{**vars(batch_join(human, fresh, second_weight=1.0)), "weights": [1.0] * 3 + [0.0] * 4})
    other = load_policy(tiny_path, config=fp32_config, trainable=True)
    assert update(other, kept, config)["losses/total"] != alone["losses/total"]
