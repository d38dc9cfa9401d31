"""Fixtures for pgcore's tests: a tiny random Llama and policies built on it.

Nothing here touches the database; every policy is fp32 unless a test asks otherwise so
that comparisons can be tight.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgcore.config import PGConfig
from pgcore.policy import Policy, load_policy


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    """Folder of the tiny random causal LM (seed 0); its tokenizer has no pad token."""
    from pgcore.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("pgcore") / "tiny", seed=0)


@pytest.fixture
def fp32_config() -> PGConfig:
    """Defaults, but without autocast so results can be compared at 1e-5."""
    return PGConfig(bf16_autocast=False)


@pytest.fixture
def frozen_policy(tiny_path) -> Policy:
    return load_policy(tiny_path)


@pytest.fixture
def lora_policy(tiny_path, fp32_config) -> Policy:
    return load_policy(tiny_path, config=fp32_config, trainable=True)


@pytest.fixture
def full_policy(tiny_path) -> Policy:
    return load_policy(tiny_path, config=PGConfig(use_lora=False, bf16_autocast=False), trainable=True)


@pytest.fixture
def drifted_lora_policy(lora_policy) -> Policy:
    """A LoRA policy whose adapter is non-zero, so it differs from its reference (the base)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora_policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return lora_policy
