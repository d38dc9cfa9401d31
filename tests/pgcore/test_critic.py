"""The critic: GAE against hand-computed values, the ridge value head, and its use as a baseline."""

import pytest
import torch
from torch.testing import assert_close

from pgcore.config import PGConfig
from pgcore.critic import CRITIC_FILE, Critic, gae_advantages, prompt_features
from pgcore.policy import ChecksumError, load_policy, reference_model, save_policy_atomic
from pgcore.rollout import generate
from pgcore.trainer import TrainBatch, compute_advantages, critic_features, update


def test_gae_matches_advantages_and_returns_computed_by_hand():
    rewards = torch.tensor([1.0, -0.5])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.1, 0.3, 9.9]])  # 9.9 sits on padding: ignored
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0: d2 = 1 - 0.6 = 0.4; d1 = 0.9*0.6 - 0.4 = 0.14, A1 = 0.14 + 0.72*0.4 = 0.428;
    #        d0 = 0.9*0.4 - 0.2 = 0.16, A0 = 0.16 + 0.72*0.428 = 0.46816.
    # Row 1: d1 = -0.5 - 0.3 = -0.8; d0 = 0.9*0.3 - 0.1 = 0.17, A0 = 0.17 + 0.72*(-0.8) = -0.406.
    assert_close(advantages, torch.tensor([[0.46816, 0.428, 0.4], [-0.406, -0.8, 0.0]]))
    assert_close(returns, torch.tensor([[0.66816, 0.828, 1.0], [-0.306, -0.5, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_the_reward_minus_each_value():
    rewards = torch.tensor([2.0, -1.0])
    values = torch.tensor([[0.5, -0.25, 1.0], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    advantages, returns = gae_advantages(rewards, values, mask)
    assert_close(advantages, torch.tensor([[1.5, 2.25, 1.0], [-1.3, 0.0, 0.0]]))
    assert_close(returns, torch.tensor([[2.0, 2.0, 2.0], [-1.0, 0.0, 0.0]]))


def test_gae_rejects_bad_shapes_and_discounts():
    with pytest.raises(ValueError, match="expected rewards"):
        gae_advantages(torch.zeros(3), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="gamma and lam"):
        gae_advantages(torch.zeros(2), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool), lam=1.5)


def test_the_critic_is_the_ridge_fit_computed_by_hand_and_forgets_with_decay():
    critic = Critic(1)
    assert_close(critic.values(torch.tensor([[3.0]])), torch.tensor([0.0]))  # no data: the neutral value
    # X = [[1, 1], [-1, 1]], r = [1, 0]: X^T X = 2 I, X^T r = [1, 1]; ridge 1 -> w = [1/3, 1/3].
    critic.fit(torch.tensor([[1.0], [-1.0]]), torch.tensor([1.0, 0.0]), ridge=1.0, decay=1.0)
    assert_close(critic.weight, torch.tensor([1 / 3, 1 / 3], dtype=torch.float64))
    assert_close(critic.values(torch.tensor([[1.0], [-1.0]])), torch.tensor([2 / 3, 0.0]))
    # decay 0.5, then X = [[1, 1]], r = [2]: gram = [[2, 1], [1, 2]], moment = [2.5, 2.5];
    # + I -> [[3, 1], [1, 3]] w = [2.5, 2.5] -> w = [0.625, 0.625].
    critic.fit(torch.tensor([[1.0]]), torch.tensor([2.0]), ridge=1.0, decay=0.5)
    assert_close(critic.weight, torch.tensor([0.625, 0.625], dtype=torch.float64))
    assert critic.n_seen == pytest.approx(2.0)
    with pytest.raises(ValueError, match="ridge"):
        critic.fit(torch.tensor([[1.0]]), torch.tensor([2.0]), ridge=0.0, decay=0.5)
    with pytest.raises(ValueError, match=r"features must be \(N, 1\)"):
        critic.values(torch.zeros(2, 3))


def test_a_critic_round_trips_through_its_file_and_a_foreign_file_is_a_clear_error(tmp_path):
    critic = Critic(2)
    critic.fit(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0, -1.0, 0.5]), ridge=2.0, decay=0.9)
    critic.save(tmp_path / "c.safetensors")
    loaded = Critic.load(tmp_path / "c.safetensors")
    for key, value in critic.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a pgcore critic"):
        Critic.load(tmp_path / "other.safetensors")


def test_config_accepts_the_critic_baseline_and_checks_its_settings():
    assert PGConfig(baseline="critic").baseline == "critic"
    with pytest.raises(ValueError, match=r"critic_ridge must be in \(0, inf\)"):
        PGConfig(critic_ridge=0.0)
    with pytest.raises(ValueError, match=r"critic_decay must be in \(0, 1\]"):
        PGConfig(critic_decay=1.5)
    with pytest.raises(ValueError, match="needs values of shape"):
        compute_advantages(torch.zeros(2), torch.tensor([0, 1]), PGConfig(baseline="critic"), torch.zeros(3))
    # A critic with no data yet: the leave-one-out baseline stands in.
    rewards = torch.tensor([1.0, -1.0, 0.5])
    assert_close(
        compute_advantages(rewards, torch.tensor([0, 1, 2]), PGConfig(baseline="critic")),
        torch.tensor([1.0 - (-0.25), -1.0 - 0.75, 0.5 - 0.0]),
    )
    assert_close(
        compute_advantages(rewards, torch.tensor([0, 1, 2]), PGConfig(baseline="critic"), torch.tensor([0.5, 0.5, 0.5])),
        torch.tensor([0.5, -1.5, 0.0]),
    )


def _batch(policy, rewards, prompts):
    rollouts = generate(policy, prompts, max_new_tokens=6, seed=0, precision="fp32")
    return TrainBatch(
        prompt_ids=[r.prompt_ids for r in rollouts],
        completion_ids=[r.completion_ids for r in rollouts],
        behaviour_logprobs=[r.behaviour_logprobs for r in rollouts],
        rewards=list(rewards),
        group_ids=list(range(len(rewards))),
    )


def test_prompt_features_are_the_reference_policys_pooled_hidden_states_whatever_the_padding(lora_policy):
    pad = lora_policy.tokenizer.pad_token_id
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13]
    with reference_model(lora_policy) as ref:
        together = prompt_features(ref, [short, long], pad)
        alone = prompt_features(ref, [short], pad)
    assert together.shape == (2, lora_policy.model.config.hidden_size)
    assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)  # left padding changes nothing
    assert_close(together.pow(2).mean(1), torch.ones(2))  # unit RMS


def test_the_critic_baseline_uses_values_fitted_on_earlier_updates_only(lora_policy):
    config = PGConfig(baseline="critic", bf16_autocast=False, epochs=1, critic_decay=1.0, critic_ridge=1.0)
    prompts = ["good film", "bad film", "a film", "the film"]
    first = _batch(lora_policy, [1.0, -1.0, 0.5, 0.0], prompts)
    assert lora_policy.critic is None
    metrics = update(lora_policy, first, config)
    # No critic yet: every value is 0, and leave-one-out stood in as the baseline.
    assert metrics["critic/value_mean"] == 0.0 and metrics["critic/leave_one_out_instead"] == 1.0
    assert metrics["critic/mse"] == pytest.approx((1 + 1 + 0.25 + 0) / 4)
    critic = lora_policy.critic
    assert critic is not None and critic.n_seen == 4
    features = critic_features(lora_policy, first, config)
    expected = Critic(features.shape[1])
    expected.fit(features, torch.tensor(first.rewards), ridge=1.0, decay=1.0)
    assert_close(critic.weight, expected.weight)
    # The second update's baseline is the critic fitted on the first batch, not on its own rewards.
    second = _batch(lora_policy, [0.5, 0.5, -0.5, 1.0], prompts)
    values = critic.values(critic_features(lora_policy, second, config))
    metrics = update(lora_policy, second, config)
    assert metrics["critic/value_mean"] == pytest.approx(float(values.mean()), abs=1e-6)
    assert metrics["critic/leave_one_out_instead"] == 0.0
    assert lora_policy.critic.n_seen == 8
    for key in ("critic/mse", "critic/explained_variance", "train/seconds_critic"):
        assert key in metrics


def test_a_saved_policy_carries_its_critic_under_the_checksum(lora_policy, tiny_path, tmp_path):
    config = PGConfig(baseline="critic", bf16_autocast=False, epochs=1)
    update(lora_policy, _batch(lora_policy, [1.0, -1.0], ["good film", "bad film"]), config)
    out = tmp_path / "v1"
    save_policy_atomic(lora_policy, out)
    assert (out / CRITIC_FILE).exists()
    loaded = load_policy(tiny_path, out, config=config, trainable=True)
    assert torch.equal(loaded.critic.weight, lora_policy.critic.weight)
    # A policy saved without a critic loads without one.
    plain = load_policy(tiny_path, config=PGConfig(bf16_autocast=False), trainable=True)
    save_policy_atomic(plain, tmp_path / "v0")
    assert load_policy(tiny_path, tmp_path / "v0").critic is None
    # A changed critic file fails the checksum before anything is loaded.
    data = bytearray((out / CRITIC_FILE).read_bytes())
    data[-1] ^= 0xFF
    (out / CRITIC_FILE).write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        load_policy(tiny_path, out)
