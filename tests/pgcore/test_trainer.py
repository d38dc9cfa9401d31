import math

import pytest
import torch

from pgcore.config import PGConfig
from pgcore.logprobs import pack_sequences, sequence_logprobs
from pgcore.policy import load_policy, reference_model
from pgcore.rollout import generate
from pgcore import precision, trainer
from pgcore.trainer import NonFiniteError, TrainBatch, TrainingCancelled, minibatch_order, update

EOS = 258
METRIC_KEYS = {
    "losses/pg_loss",
    "losses/total",
    "objective/kl",
    "objective/mean_reward",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/entropy",
    "train/steps",
    "train/seconds",
}


def _batch(policy, rewards, groups=None, seed=0, max_new_tokens=8):
    prompts = [f"prompt {g}" for g in (groups or range(len(rewards)))]
    # fp32 sampling: behaviour logprobs exactly the fp32 trainer's, so ratios can be checked tightly
    rollouts = generate(policy, prompts, max_new_tokens=max_new_tokens, seed=seed, precision="fp32")
    return TrainBatch(
        prompt_ids=[r.prompt_ids for r in rollouts],
        completion_ids=[r.completion_ids for r in rollouts],
        behaviour_logprobs=[r.behaviour_logprobs for r in rollouts],
        rewards=list(rewards),
        group_ids=list(groups or range(len(rewards))),
    )


def _sequence_logprob(policy, batch, i):
    packed = pack_sequences([batch.prompt_ids[i]], [batch.completion_ids[i]], EOS)
    with torch.no_grad():
        logprobs, _ = sequence_logprobs(policy.model, packed.input_ids, packed.attention_mask, packed.completion_mask)
    return float(logprobs.sum())


def _weights(policy):
    return [p.detach().clone() for p in policy.trainable_parameters]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(params=["lora", "full"])
def trainable_policy(request, lora_policy, full_policy):
    return lora_policy if request.param == "lora" else full_policy


@pytest.mark.parametrize("reward, direction", [(1.0, 1), (-1.0, -1)])
def test_one_update_moves_a_completions_logprob_with_the_sign_of_its_advantage(trainable_policy, reward, direction):
    config = PGConfig(lr=1e-3, epochs=1, bf16_autocast=False, use_lora=trainable_policy.is_lora)
    batch = _batch(trainable_policy, [reward])
    before = _sequence_logprob(trainable_policy, batch, 0)
    update(trainable_policy, batch, config)
    after = _sequence_logprob(trainable_policy, batch, 0)
    assert (after - before) * direction > 1e-3


def test_leave_one_out_raises_the_preferred_completion_and_lowers_the_other(lora_policy):
    batch = _batch(lora_policy, [1.0, -1.0], groups=[0, 0])
    before = [_sequence_logprob(lora_policy, batch, i) for i in range(2)]
    update(lora_policy, batch, PGConfig(lr=1e-3, bf16_autocast=False))
    after = [_sequence_logprob(lora_policy, batch, i) for i in range(2)]
    assert after[0] > before[0] and after[1] < before[1]


def test_metrics_are_finite_with_kl_and_entropy_never_negative(lora_policy, fp32_config):
    metrics = update(lora_policy, _batch(lora_policy, [1.0, 0.0, -0.5], groups=[0, 0, 1]), fp32_config)
    assert METRIC_KEYS <= set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert metrics["objective/kl"] >= 0 and metrics["policy/entropy"] >= 0 and metrics["policy/approx_kl"] >= 0
    assert metrics["train/steps"] == fp32_config.epochs
    assert metrics["objective/mean_reward"] == pytest.approx(1 / 6)


def test_a_batch_of_one_rating_updates_without_nan(lora_policy, fp32_config):
    metrics = update(lora_policy, _batch(lora_policy, [0.5]), fp32_config)
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(torch.isfinite(p).all() for p in lora_policy.trainable_parameters)


@pytest.mark.parametrize("whiten", [False, True])
def test_all_equal_ratings_give_zero_advantages_and_leave_the_weights_alone(lora_policy, whiten):
    config = PGConfig(bf16_autocast=False, whiten_advantages=whiten)
    batch = _batch(lora_policy, [0.5, 0.5, 0.5, 0.5], groups=[0, 0, 1, 1])
    before = _weights(lora_policy)
    metrics = update(lora_policy, batch, config)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["losses/pg_loss"] == 0.0
    for a, b in zip(before, _weights(lora_policy)):
        torch.testing.assert_close(a, b)


@pytest.fixture
def no_steps(monkeypatch):
    """Counts AdamW steps, so a test can assert that none happened."""
    calls = []
    original = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


def test_a_nan_reward_is_refused_before_any_step_and_names_the_completion(lora_policy, fp32_config, no_steps):
    batch = _batch(lora_policy, [1.0, float("nan"), 0.0])
    before = _weights(lora_policy)
    with pytest.raises(NonFiniteError, match=r"reward of completion 1 is nan"):
        update(lora_policy, batch, fp32_config)
    assert no_steps == [] and _same(before, _weights(lora_policy))


def test_a_non_finite_behaviour_logprob_is_refused(lora_policy, fp32_config, no_steps):
    batch = _batch(lora_policy, [1.0, 0.0])
    batch.behaviour_logprobs[0][2] = float("-inf")
    with pytest.raises(NonFiniteError, match=r"behaviour logprob of completion 0, token 2 is -inf"):
        update(lora_policy, batch, fp32_config)
    assert no_steps == []


def test_a_nan_loss_raises_and_never_steps(lora_policy, fp32_config, no_steps):
    batch = _batch(lora_policy, [1.0, -1.0])
    before = _weights(lora_policy)
    lora_policy.model.get_output_embeddings().register_forward_hook(lambda m, i, out: out * float("nan"))
    with pytest.raises(NonFiniteError, match=r"loss is non-finite .* at epoch 0, step 0"):
        update(lora_policy, batch, fp32_config)
    assert no_steps == [] and _same(before, _weights(lora_policy))


def test_an_infinite_gradient_raises_and_never_steps(lora_policy, fp32_config, no_steps):
    batch = _batch(lora_policy, [1.0, -1.0])
    before = _weights(lora_policy)
    lora_policy.trainable_parameters[0].register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteError, match="gradient norm is non-finite"):
        update(lora_policy, batch, fp32_config)
    assert no_steps == [] and _same(before, _weights(lora_policy))


def test_on_step_reports_progress_after_every_optimiser_step(lora_policy):
    config = PGConfig(epochs=2, minibatch_size=2, bf16_autocast=False)
    seen = []
    update(lora_policy, _batch(lora_policy, [1.0, 0.0, -1.0]), config, on_step=seen.append)
    assert [(s["epoch"], s["step"], s["total_steps"]) for s in seen] == [(0, 1, 4), (0, 2, 4), (1, 3, 4), (1, 4, 4)]
    assert {"losses/pg_loss", "objective/kl", "policy/clipfrac", "policy/approx_kl"} <= set(seen[0])
    # Entropy costs a pass over the vocabulary, so it is measured in the last epoch only.
    assert "policy/entropy" not in seen[0] and seen[-1]["policy/entropy"] >= 0


def test_cancelling_from_on_step_stops_the_update_and_restores_the_weights(lora_policy, fp32_config):
    before = _weights(lora_policy)

    def cancel(info):
        if info["step"] == 2:
            raise TrainingCancelled("stopped by admin")

    with pytest.raises(TrainingCancelled, match="stopped by admin"):
        update(lora_policy, _batch(lora_policy, [1.0, -1.0]), PGConfig(bf16_autocast=False), on_step=cancel)
    assert _same(before, _weights(lora_policy))


def test_training_never_changes_the_reference(trainable_policy, frozen_policy):
    config = PGConfig(lr=1e-2, bf16_autocast=False, use_lora=trainable_policy.is_lora)
    batch = _batch(trainable_policy, [1.0, -1.0])
    update(trainable_policy, batch, config)
    ids = torch.tensor([batch.prompt_ids[0] + batch.completion_ids[0]])
    with torch.no_grad():
        base = frozen_policy.model(input_ids=ids).logits
        with reference_model(trainable_policy) as ref:
            torch.testing.assert_close(ref(input_ids=ids).logits, base)
        assert not torch.allclose(trainable_policy.model(input_ids=ids).logits, base)


def test_without_tis_stale_samples_show_ratios_away_from_one(lora_policy):
    config = PGConfig(bf16_autocast=False, tis_cap=0.0)
    batch = _batch(lora_policy, [1.0, -1.0, 0.5])
    batch.behaviour_logprobs = [[lp - 0.3 for lp in row] for row in batch.behaviour_logprobs]
    seen = []
    update(lora_policy, batch, config, on_step=seen.append)
    assert seen[0]["policy/ratio_mean"] == pytest.approx(math.exp(0.3), rel=1e-3)
    assert seen[0]["policy/clipfrac"] == 1.0
    assert "policy/tis_weight_mean" not in seen[0]


def test_with_tis_stale_samples_get_the_truncated_weight_and_a_ratio_of_one(lora_policy, fp32_config):
    batch = _batch(lora_policy, [1.0, -1.0, 0.5])
    batch.behaviour_logprobs = [[lp - 0.3 for lp in row] for row in batch.behaviour_logprobs]
    seen = []
    update(lora_policy, batch, fp32_config, on_step=seen.append)
    assert seen[0]["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert seen[0]["policy/clipfrac"] == 0.0
    assert seen[0]["policy/tis_weight_mean"] == pytest.approx(math.exp(0.3), rel=1e-3)
    assert seen[0]["policy/tis_truncated"] == 0.0

    very_stale = _batch(lora_policy, [1.0, -1.0, 0.5])
    very_stale.behaviour_logprobs = [[lp - 1.0 for lp in row] for row in very_stale.behaviour_logprobs]
    seen = []
    update(lora_policy, very_stale, fp32_config, on_step=seen.append)
    assert seen[0]["policy/tis_weight_mean"] == pytest.approx(fp32_config.tis_cap)
    assert seen[0]["policy/tis_truncated"] == 1.0


@pytest.fixture
def native_bf16(monkeypatch):
    """Exercise the bf16 autocast path on any CPU (on one without native bf16 matmuls it is only slow)."""
    monkeypatch.setattr(precision, "native_bf16_matmul", lambda: True)


def test_bf16_autocast_trains_fp32_master_weights(tiny_path, native_bf16):
    config = PGConfig(bf16_autocast=True, lr=1e-3)
    policy = load_policy(tiny_path, config=config, trainable=True)
    metrics = update(policy, _batch(policy, [1.0, -1.0], groups=[0, 0]), config)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["train/bf16_autocast"] == 1.0
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())


def test_bf16_autocast_follows_the_cpu_and_falls_back_to_the_same_fp32_update(tiny_path, monkeypatch):
    """Without native bf16 matmuls (e.g. AVX2-only CPUs) bf16 is the slow path, so the update runs fp32."""
    import torch.nn.functional as F

    assert not trainer.bf16_autocast_active(PGConfig(bf16_autocast=False))
    monkeypatch.setattr(precision, "native_bf16_matmul", lambda: False)
    assert not trainer.bf16_autocast_active(PGConfig(bf16_autocast=True))
    matmul_dtypes = set()
    linear = F.linear

    def recording_linear(x, w, b=None):
        out = linear(x, w, b)
        matmul_dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(F, "linear", recording_linear)
    weights = {}
    for bf16 in (True, False):
        config = PGConfig(bf16_autocast=bf16, lr=1e-3)
        policy = load_policy(tiny_path, config=config, trainable=True)
        metrics = update(policy, _batch(policy, [1.0, -1.0], groups=[0, 0]), config)
        assert metrics["train/bf16_autocast"] == 0.0
        weights[bf16] = _weights(policy)
    assert matmul_dtypes == {torch.float32}
    for a, b in zip(weights[True], weights[False]):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "machine, avx512_bf16, amx, onednn_bf16, expected",
    [
        ("x86_64", False, False, False, False),  # AVX2 only
        ("x86_64", False, False, True, False),  # AVX-512 without AVX512_BF16: oneDNN converts, slower than fp32
        ("x86_64", True, False, True, True),  # AVX512_BF16 (e.g. Zen 4)
        ("AMD64", False, True, True, True),  # AMX
        ("aarch64", False, False, True, True),  # Arm: oneDNN's check decides
        ("aarch64", False, False, False, False),
    ],
)
def test_native_bf16_needs_bf16_instructions_not_just_avx512(monkeypatch, machine, avx512_bf16, amx, onednn_bf16, expected):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    assert trainer.native_bf16_matmul() is expected
    assert trainer.bf16_autocast_active(PGConfig(bf16_autocast=True)) is expected


def test_native_bf16_is_false_when_this_build_cannot_say(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
    assert trainer.native_bf16_matmul() is False


def test_a_frozen_policy_or_a_malformed_batch_is_rejected(frozen_policy, lora_policy, fp32_config):
    batch = _batch(lora_policy, [1.0])
    with pytest.raises(ValueError, match="no trainable parameters"):
        update(frozen_policy, batch, fp32_config)
    batch.group_ids = []
    with pytest.raises(ValueError, match="different lengths"):
        update(lora_policy, batch, fp32_config)
    with pytest.raises(ValueError, match="empty"):
        update(lora_policy, TrainBatch([], [], [], [], []), fp32_config)


def test_minibatches_hold_whole_prompt_groups_in_a_seeded_shuffle():
    prompts = [[1], [2], [1], [3], [2], [1], [3], [2]]
    order = minibatch_order(prompts, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(prompts)))
    runs = [prompts[i] for i in order]
    starts = [k for k in range(len(runs)) if k == 0 or runs[k] != runs[k - 1]]
    assert len(starts) == 3  # each prompt's completions are contiguous
    assert order == minibatch_order(prompts, torch.Generator().manual_seed(0))
    assert minibatch_order(prompts) == [0, 2, 5, 1, 4, 7, 3, 6]  # no generator: first-seen group order
    orders = {tuple(minibatch_order(prompts, torch.Generator().manual_seed(s))) for s in range(20)}
    assert len(orders) > 5  # groups and members really are shuffled


def test_an_update_with_shared_prompts_matches_one_without(tiny_path):
    """Prompt sharing is a speed-up only: same steps, same metrics, same weights."""
    results = {}
    for share in (True, False):
        config = PGConfig(bf16_autocast=False, share_prompts=share, minibatch_size=4)
        policy = load_policy(tiny_path, config=config, trainable=True)
        batch = _batch(policy, [1.0, -1.0, 0.5, 2.0, -0.5, 0.0], groups=[0, 0, 0, 1, 1, 1], max_new_tokens=6)
        metrics = update(policy, batch, config)
        results[share] = (metrics, _weights(policy))
    (shared, w_shared), (separate, w_separate) = results[True], results[False]
    for key in ("losses/pg_loss", "objective/kl", "policy/entropy", "policy/approx_kl"):
        assert shared[key] == pytest.approx(separate[key], abs=1e-5)
    for a, b in zip(w_shared, w_separate):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not _same(w_shared, _weights(load_policy(tiny_path, config=PGConfig(), trainable=True)))


def test_frozen_weights_held_in_bf16_change_no_autocast_result_and_are_restored(drifted_lora_policy):
    from pgcore.logprobs import score_completions
    from pgcore.trainer import frozen_weights_in_bf16

    policy = drifted_lora_policy
    model = policy.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    embedding = model.get_input_embeddings().weight
    prompts, completions = [[5, 6, 7], [5, 6, 7], [9]], [[10, 11, EOS], [12], [13, 14]]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        expected, _, _ = score_completions(model, prompts, completions, EOS)
        with frozen_weights_in_bf16(policy):
            frozen = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
            assert frozen and all(w.dtype == torch.bfloat16 for w in frozen)
            assert model.get_input_embeddings().weight.dtype == torch.float32  # the tied embedding is left alone
            got, _, _ = score_completions(model, prompts, completions, EOS)
    assert torch.equal(got, expected)
    after = dict(model.named_parameters())
    assert all(after[name].dtype == torch.float32 and torch.equal(after[name], value) for name, value in before.items())
    assert model.get_input_embeddings().weight is embedding


def test_frozen_weights_are_restored_when_an_update_fails(lora_policy, native_bf16):
    config = PGConfig(bf16_autocast=True)
    batch = _batch(lora_policy, [1.0, -1.0])
    dtypes = {name: p.dtype for name, p in lora_policy.model.named_parameters()}

    def stop(_info):
        raise TrainingCancelled("stop")

    with pytest.raises(TrainingCancelled):
        update(lora_policy, batch, config, on_step=stop)
    assert {name: p.dtype for name, p in lora_policy.model.named_parameters()} == dtypes


def test_a_fresh_adapter_reuses_the_reference_pass_as_the_proximal_one_with_the_same_update(
    lora_policy, fp32_config, tiny_path, monkeypatch
):
    assert trainer.lora_adapter_is_zero(lora_policy)
    assert not trainer.lora_adapter_is_zero(load_policy(tiny_path))  # not LoRA at all
    batch = _batch(lora_policy, [1.0, -1.0, 0.5])

    def run(skip_shortcut):
        policy = load_policy(tiny_path, config=fp32_config, trainable=True)
        passes = []
        real = trainer.proximal_logprobs
        monkeypatch.setattr(trainer, "proximal_logprobs", lambda *a, **k: passes.append(1) or real(*a, **k))
        if skip_shortcut:
            monkeypatch.setattr(trainer, "lora_adapter_is_zero", lambda policy: False)
        seen = []
        update(policy, batch, fp32_config, on_step=seen.append)
        monkeypatch.undo()
        return len(passes), seen, _weights(policy)

    passes_fast, seen_fast, weights_fast = run(skip_shortcut=False)
    passes_slow, seen_slow, weights_slow = run(skip_shortcut=True)
    assert (passes_fast, passes_slow) == (0, 1)
    assert [s["policy/tis_weight_mean"] for s in seen_fast] == [s["policy/tis_weight_mean"] for s in seen_slow]
    assert _same(weights_fast, weights_slow)


def test_a_trained_adapter_is_not_zero_and_gets_its_own_proximal_pass(drifted_lora_policy):
    assert not trainer.lora_adapter_is_zero(drifted_lora_policy)


def test_a_completion_weight_scales_its_advantage_and_zero_weights_leave_the_policy_alone(lora_policy):
    import dataclasses

    config = PGConfig(bf16_autocast=False, epochs=1)
    batch = _batch(lora_policy, [1.0, -1.0], groups=[0, 0])
    before = _weights(lora_policy)
    metrics = update(lora_policy, dataclasses.replace(batch, weights=[0.0, 0.0]), config)
    assert metrics["losses/pg_loss"] == 0.0 and _same(before, _weights(lora_policy))
    start = _sequence_logprob(lora_policy, batch, 0)
    moved = {}
    for weights in ([1.0, 1.0], [0.0, 1.0]):
        update(lora_policy, dataclasses.replace(batch, weights=weights), config)
        moved[tuple(weights)] = _sequence_logprob(lora_policy, batch, 0) - start
        with torch.no_grad():
            for p, saved in zip(lora_policy.trainable_parameters, before):
                p.copy_(saved)
    # Completion 0 (the preferred one) rises when it counts, far less when only completion 1's push counts.
    assert moved[(1.0, 1.0)] > 1e-3 and abs(moved[(0.0, 1.0)]) < moved[(1.0, 1.0)]


@pytest.mark.parametrize("weights", [[1.0], [1.0, -0.1], [1.0, float("nan")], [1.0, float("inf")]])
def test_weights_of_the_wrong_length_negative_or_not_finite_are_refused(lora_policy, fp32_config, no_steps, weights):
    import dataclasses

    batch = _batch(lora_policy, [1.0, -1.0], groups=[0, 0])
    with pytest.raises(ValueError, match="weight"):
        update(lora_policy, dataclasses.replace(batch, weights=weights), fp32_config)
    assert not no_steps
