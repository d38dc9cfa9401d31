"""The reward model's backbone runs on the device a policy would (``pgcore.precision.select_device``).

As in test_training_device.py, a machine without a GPU proves the choice reaches the loader
by being told to use one it lacks; the features a CPU computes are stored as before. Where
PyTorch sees a GPU, features computed there match the CPU's and come back on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from webapp.annotation.models import Completion
from webapp.rewards import services
from webapp.rewards.models import RewardModelVersion

from tests.webapp.rewards_helpers import GOOD, _rate_learnable, many_prompts  # noqa: F401

PROMPTS, COMPLETIONS = [[5, 6, 7], [8, 9]], [[GOOD] * 4, [200, 201]]


def test_a_fit_on_a_worker_told_to_use_a_gpu_it_lacks_fails_with_the_reason(
    project, annotator, many_prompts, monkeypatch
):
    _rate_learnable(project, many_prompts, annotator)
    config = services.reward_model_config_for(project=project)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("REWARDLOOP_DEVICE", "cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        services.features_compute(project=project, prompt_ids=PROMPTS, completion_ids=COMPLETIONS, config=config)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        services.reward_model_fit(project=project)
    assert not RewardModelVersion.objects.exists()
    assert not Completion.objects.filter(rm_score__isnull=False).exists()


def test_on_the_cpu_the_features_are_cpu_tensors_and_a_fit_is_stored(project, annotator, many_prompts, monkeypatch):
    _rate_learnable(project, many_prompts, annotator)
    monkeypatch.setenv("REWARDLOOP_DEVICE", "cpu")
    config = services.reward_model_config_for(project=project)
    features = services.features_compute(project=project, prompt_ids=PROMPTS, completion_ids=COMPLETIONS, config=config)
    assert features.device == torch.device("cpu") and features.shape[0] == 2
    assert services.reward_model_fit(project=project).number == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_backbone_runs_there_and_the_features_match_the_cpus(project, monkeypatch):
    config = services.reward_model_config_for(project=project)
    monkeypatch.setenv("REWARDLOOP_DEVICE", "cpu")
    on_cpu = services.features_compute(project=project, prompt_ids=PROMPTS, completion_ids=COMPLETIONS, config=config)
    monkeypatch.setenv("REWARDLOOP_DEVICE", "cuda")
    on_gpu = services.features_compute(project=project, prompt_ids=PROMPTS, completion_ids=COMPLETIONS, config=config)
    assert on_gpu.device == torch.device("cpu")
    assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)
