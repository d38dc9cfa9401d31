"""The policy, the trainer's tensors and the scorer's inputs live on the device chosen for them.

No GPU is needed for most of these: PyTorch's ``meta`` device (shapes, no data) stands in for
a second device, since a model there refuses inputs left on the CPU exactly as a CUDA model
does. The CUDA test runs where PyTorch sees a GPU and is skipped elsewhere.
"""

import pytest
import torch
from torch.testing import assert_close

from pgcore.config import PGConfig
from pgcore.critic import prompt_features
from pgcore.logprobs import score_completions
from pgcore.policy import load_policy, save_policy_atomic
from pgcore.precision import DEVICE_ENV
from pgcore.rollout import default_device, generate
from pgcore.trainer import TrainBatch, update

META = torch.device("meta")
PROMPTS = [[5, 6, 7], [5, 6, 7], [8, 9]]
COMPLETIONS = [[10, 11, 12], [13, 14], [15]]


def _devices(module: torch.nn.Module) -> set[torch.device]:
    return {p.device for p in module.parameters()} | {b.device for b in module.buffers()}


@pytest.mark.parametrize("use_lora", [True, False])
def test_a_policy_is_loaded_onto_the_device_asked_for_with_its_reference(tiny_path, use_lora):
    policy = load_policy(tiny_path, config=PGConfig(use_lora=use_lora), trainable=True, device=META)
    assert _devices(policy.model) == {META}
    if not use_lora:
        assert _devices(policy.ref_model) == {META}
    assert policy.trainable_parameters and all(p.device == META for p in policy.trainable_parameters)


def test_without_a_device_a_policy_stays_on_the_cpu(tiny_path):
    assert _devices(load_policy(tiny_path).model) == {torch.device("cpu")}


@pytest.mark.parametrize("share_prompts", [True, False])
def test_scoring_sends_its_inputs_to_the_models_device(tiny_path, share_prompts):
    model = load_policy(tiny_path, device=META).model
    logprobs, entropy, mask = score_completions(model, PROMPTS, COMPLETIONS, 0, share_prompts=share_prompts)
    assert logprobs.device == entropy.device == mask.device == META
    assert logprobs.shape == (3, 3)
    assert prompt_features(model, PROMPTS, 0).device == META


def test_the_sampling_device_follows_the_environment(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        default_device()


def _batch(policy, device):
    rollouts = generate(policy, ["a", "a", "b", "b"], max_new_tokens=6, seed=0, precision="fp32", device=device)
    return TrainBatch(
        prompt_ids=[r.prompt_ids for r in rollouts],
        completion_ids=[r.completion_ids for r in rollouts],
        behaviour_logprobs=[r.behaviour_logprobs for r in rollouts],
        rewards=[1.0, -1.0, 0.5, -0.5],
        group_ids=[0, 0, 1, 1],
    )


@pytest.mark.parametrize("baseline", ["loo", "critic"])
def test_an_update_on_a_cpu_policy_given_as_its_device_trains_and_saves(tiny_path, tmp_path, baseline):
    config = PGConfig(bf16_autocast=False, baseline=baseline, epochs=1)
    policy = load_policy(tiny_path, config=config, trainable=True, device="cpu")
    metrics = update(policy, _batch(policy, "cpu"), config)
    assert metrics["train/steps"] >= 1
    save_policy_atomic(policy, tmp_path / "v1")
    again = load_policy(tiny_path, tmp_path / "v1")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert_close(again.model(input_ids=ids).logits, policy.model(input_ids=ids).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("baseline", ["loo", "critic"])
def test_on_a_gpu_an_update_runs_there_and_its_checkpoint_loads_on_the_cpu(tiny_path, tmp_path, baseline):
    config = PGConfig(bf16_autocast=False, baseline=baseline, epochs=1)
    cuda = torch.device("cuda")
    policy = load_policy(tiny_path, config=config, trainable=True, device=cuda)
    before = [p.detach().clone() for p in policy.trainable_parameters]
    metrics = update(policy, _batch(policy, cuda), config)
    assert all(p.device.type == "cuda" for p in policy.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.trainable_parameters))
    assert metrics["objective/kl"] >= 0
    save_policy_atomic(policy, tmp_path / "v1")
    on_cpu = load_policy(tiny_path, tmp_path / "v1")
    assert _devices(on_cpu.model) == {torch.device("cpu")}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert_close(on_cpu.model(input_ids=ids).logits, policy.model(input_ids=ids.to(cuda)).logits.cpu(), atol=1e-4, rtol=1e-4)


def test_reward_model_features_are_computed_on_the_backbones_device(tiny_path):
    from pgcore.reward_model import RewardModelConfig, completion_features

    model = load_policy(tiny_path, device=META).model
    config = RewardModelConfig(layers=(1, -1), pooling="mean_last")
    features = completion_features(model, PROMPTS, COMPLETIONS, config, batch_size=2)
    assert features.device == META
    assert features.shape == (3, 2 * 2 * model.config.hidden_size)
    assert completion_features(model, [], [], config).device == META


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_reward_model_features_match_the_cpus(tiny_path):
    from pgcore.reward_model import RewardModelConfig, completion_features

    config = RewardModelConfig(layers=(1, -1), pooling="mean_last")
    on_cpu = completion_features(load_policy(tiny_path).model, PROMPTS, COMPLETIONS, config)
    on_gpu = completion_features(load_policy(tiny_path, device="cuda").model, PROMPTS, COMPLETIONS, config)
    assert on_gpu.device.type == "cuda"
    assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
