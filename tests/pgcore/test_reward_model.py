"""The reward model: its loss on each judgment kind, the ensemble, features, storage."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from pgcore.policy import ChecksumError
from pgcore.reward_model import (
    Judgments,
    RewardModelConfig,
    completion_features,
    fit,
    judgment_loss,
    load_reward_model,
    pair_target_from_scores,
    pairwise_accuracy,
    pearson,
    save_reward_model,
    score,
    spearman,
)
from pgcore.rewards import likert_to_score, pairwise_to_scores, thumbs_to_score

SMALL = dict(n_members=4, epochs=150, hidden=16, input_dropout=0.0)


def _synthetic(n=40, f=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g)
    y = (0.5 * x[:, 0] - 0.3 * x[:, 1]).clamp(-1, 1)
    return x, y


# ---------------------------------------------------------------- the loss, by hand


def test_likert_ratings_are_squared_error_on_their_scores():
    # Likert 5 -> 1.0 and 3 -> 0.0 (pgcore.rewards); predictions 0.5 and -1.0.
    target = torch.tensor([likert_to_score(5), likert_to_score(3)])
    loss = judgment_loss(torch.tensor([0.5, -1.0]), target, torch.zeros(0), torch.zeros(0))
    assert_close(loss, torch.tensor((0.5**2 + 1.0**2) / 2))


def test_thumbs_ratings_are_squared_error_on_plus_minus_one():
    target = torch.tensor([thumbs_to_score(True), thumbs_to_score(False)])
    loss = judgment_loss(torch.tensor([0.0, 0.0]), target, torch.zeros(0), torch.zeros(0))
    assert_close(loss, torch.tensor(1.0))


def test_a_pairwise_win_is_bradley_terry_cross_entropy():
    target = pair_target_from_scores(*pairwise_to_scores("a"))
    assert target == 1.0
    loss = judgment_loss(torch.zeros(0), torch.zeros(0), torch.tensor([1.0]), torch.tensor([target]))
    assert_close(loss, torch.tensor(math.log(1 + math.exp(-1.0))))  # -log sigmoid(1)


def test_a_loss_for_b_uses_the_scale_beta():
    target = pair_target_from_scores(*pairwise_to_scores("b"))
    assert target == 0.0
    loss = judgment_loss(torch.zeros(0), torch.zeros(0), torch.tensor([2.0]), torch.tensor([target]), bt_scale=0.5)
    assert_close(loss, torch.tensor(math.log(1 + math.exp(1.0))))  # -log(1 - sigmoid(0.5 * 2))


def test_ties_and_both_bad_are_a_one_half_target_with_minimum_log_two():
    assert pair_target_from_scores(*pairwise_to_scores("tie")) == 0.5
    assert pair_target_from_scores(*pairwise_to_scores("both_bad")) == 0.5
    loss = judgment_loss(torch.zeros(0), torch.zeros(0), torch.tensor([0.0]), torch.tensor([0.5]))
    assert_close(loss, torch.tensor(math.log(2.0)))


def test_mixed_judgments_are_one_weighted_mean():
    loss = judgment_loss(
        torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1.0]), pairwise_weight=2.0
    )
    expected = (0.25 + 2.0 * math.log(1 + math.exp(-1.0))) / 3.0
    assert_close(loss, torch.tensor(expected))


def test_bootstrap_weights_count_each_judgment_that_many_times():
    pred, target = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    loss = judgment_loss(pred, target, torch.zeros(1, 0), torch.zeros(1, 0), rating_weight=torch.tensor([[3.0, 1.0]]))
    assert_close(loss, torch.tensor([3.0 / 4.0]))


def test_no_judgment_at_all_gives_zero_not_nan():
    loss = judgment_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0))
    assert float(loss) == 0.0


# ---------------------------------------------------------------- fitting and the ensemble


def test_fit_reduces_the_loss():
    x, y = _synthetic()
    _model, metrics = fit(x, Judgments(torch.arange(len(y)), y), RewardModelConfig(**SMALL))
    assert metrics["loss/final"] < 0.5 * metrics["loss/initial"]


def test_fit_learns_from_pairs_alone():
    x, y = _synthetic(n=30)
    a, b = torch.arange(0, 30, 2), torch.arange(1, 30, 2)
    target = (y[a] > y[b]).float()
    model, metrics = fit(x, Judgments(pair_a=a, pair_b=b, pair_target=target), RewardModelConfig(**SMALL))
    assert metrics["loss/final"] < metrics["loss/initial"]
    mean, _std = score(model, x)
    assert pairwise_accuracy(mean, y) > 0.7


def test_ensemble_is_less_certain_far_from_its_training_points():
    x, y = _synthetic()
    model, _ = fit(x, Judgments(torch.arange(len(y)), y), RewardModelConfig(**SMALL))
    _, std_train = score(model, x)
    far = _synthetic(n=40, seed=1)[0] * 8.0 + 5.0
    _, std_far = score(model, far)
    assert std_far.mean() > 3 * std_train.mean()


def test_principal_components_keep_what_predicts_the_rating():
    x, y = _synthetic(n=60)
    model, _ = fit(x, Judgments(torch.arange(40), y[:40]), RewardModelConfig(**SMALL, pca_dim=6))
    assert model.n_inputs == 6
    assert pearson(score(model, x[40:])[0], y[40:]) > 0.8


def test_members_differ_so_the_ensemble_has_a_spread():
    x, y = _synthetic()
    model, _ = fit(x, Judgments(torch.arange(len(y)), y), RewardModelConfig(**SMALL))
    _, std = score(model, x)
    assert (std > 0).all()


def test_one_member_has_zero_uncertainty():
    x, y = _synthetic()
    model, _ = fit(x, Judgments(torch.arange(len(y)), y), RewardModelConfig(**{**SMALL, "n_members": 1}))
    _, std = score(model, x)
    assert (std == 0).all()


@pytest.mark.parametrize("head,pca_dim", [("linear", 0), ("mlp", 0), ("mlp", 4), ("ridge", 0), ("ridge", 4)])
def test_a_single_rating_fits_without_nan(head, pca_dim):
    x, _ = _synthetic(n=1)
    model, metrics = fit(x, Judgments([0], [0.5]), RewardModelConfig(**{**SMALL, "head": head, "pca_dim": pca_dim}))
    mean, std = score(model, torch.cat([x, x + 1]))
    assert all(math.isfinite(v) for v in metrics.values())
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()


def test_all_equal_ratings_and_constant_features_fit_without_nan():
    x = torch.ones(6, 4)
    model, metrics = fit(x, Judgments(torch.arange(6), torch.full((6,), 0.5)), RewardModelConfig(**SMALL))
    mean, std = score(model, x)
    assert all(math.isfinite(v) for v in metrics.values())
    assert_close(mean, torch.full((6,), 0.5), atol=0.05, rtol=0)
    assert torch.isfinite(std).all()


def test_a_single_tie_fits_without_nan():
    x, _ = _synthetic(n=2)
    model, metrics = fit(x, Judgments(pair_a=[0], pair_b=[1], pair_target=[0.5]), RewardModelConfig(**SMALL))
    assert all(math.isfinite(v) for v in metrics.values())
    assert torch.isfinite(score(model, x)[0]).all()


def test_fit_refuses_no_judgments_and_bad_indices():
    x, _ = _synthetic(n=3)
    with pytest.raises(ValueError, match="at least one judgment"):
        fit(x, Judgments())
    with pytest.raises(ValueError, match="outside"):
        fit(x, Judgments([5], [0.0]))
    with pytest.raises(ValueError, match="finite"):
        fit(x, Judgments([0], [float("nan")]))


def test_fit_is_reproducible_with_one_seed():
    x, y = _synthetic()
    config = RewardModelConfig(**SMALL)
    m1, _ = fit(x, Judgments(torch.arange(len(y)), y), config)
    m2, _ = fit(x, Judgments(torch.arange(len(y)), y), config)
    assert_close(score(m1, x)[0], score(m2, x)[0])


# ---------------------------------------------------------------- the ridge head (closed form)


def test_a_ridge_member_without_bootstrap_is_the_normal_equations_solution():
    x, y = _synthetic(n=30, f=5)
    alpha = 2.0
    config = RewardModelConfig(head="ridge", ridge_alpha=alpha, n_members=1, bootstrap=False)
    model, metrics = fit(x, Judgments(torch.arange(30), y), config)
    # By hand, on the standardised features: penalise the weights, not the bias.
    xs = ((x - x.mean(0)) / x.std(0, unbiased=False)).double()
    design = torch.cat([xs, torch.ones(30, 1, dtype=torch.float64)], dim=1)
    penalty = torch.diag(torch.tensor([alpha] * 5 + [0.0], dtype=torch.float64))
    expected = torch.linalg.solve(design.T @ design + penalty, design.T @ y.double())
    assert_close(model.w[0].double(), expected[:-1], atol=1e-5, rtol=1e-5)
    assert_close(model.b[0].double(), expected[-1], atol=1e-5, rtol=1e-5)
    assert metrics["fit/ridge_alpha"] == alpha


def test_ridge_bootstrap_counts_weight_rows_like_repeated_rows():
    from pgcore.reward_model import _ridge_solve

    design = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 5.0], dtype=torch.float64)
    weighted = _ridge_solve(design, target, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64), 0.5)
    repeated = _ridge_solve(design[[0, 0, 1]], target[[0, 0, 1]], torch.ones(3, dtype=torch.float64), 0.5)
    assert_close(weighted, repeated)


def test_ridge_ensemble_predicts_and_has_a_spread():
    x, y = _synthetic(n=80)
    model, metrics = fit(x, Judgments(torch.arange(60), y[:60]), RewardModelConfig(head="ridge", n_members=5))
    mean, std = score(model, x[60:])
    assert pearson(mean, y[60:]) > 0.9
    assert (std > 0).all()
    assert metrics["fit/ridge_alpha"] in __import__("pgcore.reward_model", fromlist=["x"]).RIDGE_ALPHAS
    assert metrics["loss/final"] < 0.5 * metrics["loss/initial"]


def test_ridge_fits_a_wide_design_for_every_member():
    # 300 inputs, 5 members: a batched LU solve of this size failed inside MKL (DLASWP) on this CPU build.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 300, generator=g)
    y = torch.tanh(x[:, :5].sum(1) / 5)
    model, metrics = fit(x, Judgments(torch.arange(400), y), RewardModelConfig(head="ridge", ridge_alpha=10.0))
    mean, std = score(model, x)
    assert torch.isfinite(mean).all() and (std > 0).all()
    assert pearson(mean, y) > 0.5


def test_ridge_learns_from_pairs_alone():
    x, y = _synthetic(n=30)
    a, b = torch.arange(0, 30, 2), torch.arange(1, 30, 2)
    target = (y[a] > y[b]).float()
    model, _ = fit(x, Judgments(pair_a=a, pair_b=b, pair_target=target), RewardModelConfig(head="ridge", ridge_alpha=1.0))
    assert pairwise_accuracy(score(model, x)[0], y) > 0.7


def test_ridge_ensemble_is_less_certain_far_from_its_training_points():
    x, y = _synthetic()
    model, _ = fit(x, Judgments(torch.arange(len(y)), y), RewardModelConfig(head="ridge", ridge_alpha=1.0))
    _, std_train = score(model, x)
    far = _synthetic(n=40, seed=1)[0] * 8.0 + 5.0
    _, std_far = score(model, far)
    assert std_far.mean() > 3 * std_train.mean()


def test_config_rejects_values_out_of_range():
    with pytest.raises(ValueError, match="pooling"):
        RewardModelConfig(pooling="max")
    with pytest.raises(ValueError, match="n_members"):
        RewardModelConfig(n_members=0)
    with pytest.raises(TypeError):
        RewardModelConfig.from_dict({"no_such_field": 1})


# ---------------------------------------------------------------- metrics


def test_rank_metrics_match_hand_computed_values():
    pred, target = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    assert spearman(pred, target) == pytest.approx(0.8)
    # 6 pairs, one (2 vs 3) discordant.
    assert pairwise_accuracy(pred, target) == pytest.approx(5 / 6)
    assert pearson(pred, pred * 2 + 1) == pytest.approx(1.0)
    assert pearson(pred, torch.ones(4)) is None
    assert pairwise_accuracy(pred, torch.ones(4)) is None


# ---------------------------------------------------------------- features from a backbone


def test_features_pool_only_completion_tokens_and_ignore_padding(frozen_policy):
    config = RewardModelConfig(layers=(1, -1), pooling="mean_last")
    prompts, completions = [[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14, 15]]
    batched = completion_features(frozen_policy.model, prompts, completions, config, batch_size=2)
    alone = completion_features(frozen_policy.model, prompts[:1], completions[:1], config)
    d = frozen_policy.model.config.hidden_size
    assert batched.shape == (2, 2 * 2 * d)
    assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)
    # The last layer's mean over the completion's two tokens, by hand.
    hidden = frozen_policy.model.model(input_ids=torch.tensor([[5, 6, 7, 9, 10]]), output_hidden_states=True)
    by_hand = hidden.hidden_states[-1][0, 3:].mean(0)
    assert_close(alone[0, 2 * d : 3 * d], by_hand, atol=1e-5, rtol=1e-5)


def test_features_of_real_completions_feed_a_fit(frozen_policy):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 12, (12,), generator=g).tolist()
    completions = [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]
    features = completion_features(frozen_policy.model, [[1, 2]] * 12, completions, RewardModelConfig())
    target = torch.tensor([len(c) / 12 for c in completions])
    model, metrics = fit(features, Judgments(torch.arange(12), target), RewardModelConfig(**SMALL))
    assert metrics["loss/final"] < metrics["loss/initial"]
    assert score(model, features)[0].shape == (12,)


def test_a_layer_beyond_the_model_is_refused(frozen_policy):
    with pytest.raises(ValueError, match="layer 9"):
        completion_features(frozen_policy.model, [[1]], [[2]], RewardModelConfig(layers=(9,)))


# ---------------------------------------------------------------- storage


@pytest.mark.parametrize("pca_dim", [0, 3])
def test_save_and_load_give_the_same_scores(tmp_path, pca_dim):
    x, y = _synthetic()
    model, _ = fit(x, Judgments(torch.arange(len(y)), y), RewardModelConfig(**SMALL, pca_dim=pca_dim))
    sha = save_reward_model(model, tmp_path / "rm", metadata={"ratings": 40})
    loaded, metadata = load_reward_model(tmp_path / "rm", expected_sha256=sha)
    assert metadata == {"ratings": 40}
    assert loaded.config == model.config
    for a, b in zip(score(model, x), score(loaded, x)):
        assert_close(a, b)


def test_a_corrupt_artefact_is_a_checksum_error(tmp_path):
    x, y = _synthetic()
    model, _ = fit(x, Judgments(torch.arange(len(y)), y), RewardModelConfig(**SMALL))
    save_reward_model(model, tmp_path / "rm")
    weights = tmp_path / "rm" / "reward_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        load_reward_model(tmp_path / "rm")


def test_a_wrong_expected_checksum_is_refused(tmp_path):
    x, y = _synthetic(n=4)
    model, _ = fit(x, Judgments(torch.arange(4), y), RewardModelConfig(**SMALL))
    save_reward_model(model, tmp_path / "rm")
    with pytest.raises(ChecksumError):
        load_reward_model(tmp_path / "rm", expected_sha256="0" * 64)


def test_a_missing_artefact_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_reward_model(tmp_path / "nothing")


# ---------------------------------------------------------------- judgment weights


@pytest.mark.parametrize("head", ["linear", "ridge"])
def test_a_judgment_of_weight_two_counts_as_the_same_judgment_twice(head):
    x, y = _synthetic(n=30, f=5)
    a, b = torch.arange(0, 10), torch.arange(10, 20)
    target = (y[a] > y[b]).float()
    config = RewardModelConfig(**{**SMALL, "head": head, "ridge_alpha": 1.0, "bootstrap": False, "pca_dim": 0})
    weighted = Judgments(torch.arange(30), y, a, b, target, rating_weight=[2.0] + [1.0] * 29,
                         pair_weight=[1.0] * 9 + [3.0])
    doubled = Judgments(torch.cat([torch.arange(30), torch.tensor([0])]), torch.cat([y, y[:1]]),
                        torch.cat([a, a[-1:].repeat(2)]), torch.cat([b, b[-1:].repeat(2)]),
                        torch.cat([target, target[-1:].repeat(2)]))
    m1, metrics1 = fit(x, weighted, config)
    m2, metrics2 = fit(x, doubled, config)
    assert_close(score(m1, x)[0], score(m2, x)[0], atol=1e-4, rtol=1e-4)
    assert metrics1["loss/final"] == pytest.approx(metrics2["loss/final"], rel=1e-4)
    # And a judgment of weight 0 is as if it were not there.
    outlier = Judgments(torch.cat([torch.arange(30), torch.tensor([3])]), torch.cat([y, torch.tensor([50.0])]),
                        rating_weight=[1.0] * 30 + [0.0])
    plain = Judgments(torch.arange(30), y)
    assert_close(score(fit(x, outlier, config)[0], x)[0], score(fit(x, plain, config)[0], x)[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="rating_weight"):
        Judgments([0, 1], [0.0, 1.0], rating_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="pair_weight"):
        Judgments(pair_a=[0], pair_b=[1], pair_target=[1.0], pair_weight=[1.0, 1.0])
