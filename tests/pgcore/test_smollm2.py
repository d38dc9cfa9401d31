"""The real SmolLM2-135M-Instruct: conversion, sampling and one update (marked ``smollm2``).

The conversion (~20 s, ~540 MB) is cached under the temp folder, or ``PGCORE_SMOLLM2_DIR``.
"""

import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from pgcore.config import PGConfig
from pgcore.logprobs import pack_sequences, sequence_logprobs
from pgcore.packaging import convert_gguf_to_hf, smollm2_gguf_path
from pgcore.policy import load_policy
from pgcore.rollout import generate
from pgcore.trainer import TrainBatch, update

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    try:
        gguf = smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    out = Path(os.environ.get("PGCORE_SMOLLM2_DIR", Path(tempfile.gettempdir()) / "pgcore-smollm2-hf"))
    return convert_gguf_to_hf(gguf, out)


def test_the_converted_model_loads_with_its_chat_template_and_eos(smollm2_dir):
    policy = load_policy(smollm2_dir)
    assert policy.model.config.model_type == "llama"
    assert policy.tokenizer.eos_token == "<|im_end|>" and policy.tokenizer.chat_template
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())


def test_a_second_conversion_reuses_the_verified_folder(smollm2_dir):
    mtime = (smollm2_dir / "model.safetensors").stat().st_mtime
    assert convert_gguf_to_hf(smollm2_gguf_path(), smollm2_dir) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime == mtime


def test_smollm2_rollouts_store_the_logprobs_of_what_was_sampled_and_train(smollm2_dir):
    config = PGConfig(epochs=1, minibatch_size=4)
    policy = load_policy(smollm2_dir, config=config, trainable=True)
    rollouts = generate(
        policy, ["Say hi.", "Name a colour.", "Count to three."], max_new_tokens=12, seed=0, precision="fp32"
    )
    packed = pack_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, _ = sequence_logprobs(policy.model, packed.input_ids, packed.attention_mask, packed.completion_mask)
    for rollout, row, mask in zip(rollouts, logprobs, packed.completion_mask):
        assert rollout.text.strip()
        assert_close(torch.tensor(rollout.behaviour_logprobs), row[mask], atol=2e-3, rtol=1e-3)

    batch = TrainBatch(
        [r.prompt_ids for r in rollouts],
        [r.completion_ids for r in rollouts],
        [r.behaviour_logprobs for r in rollouts],
        [1.0, -1.0, 0.0],
        [0, 1, 2],
    )
    metrics = update(policy, batch, config)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["objective/kl"] >= 0 and metrics["policy/entropy"] >= 0
    # Fresh samples: under bf16 autocast the ratio is 1 up to bf16 rounding.
    assert abs(metrics["policy/ratio_mean"] - 1) < 0.1


def test_smollm2_bf16_rollouts_differ_from_the_trainer_by_little_and_tis_weighs_it(smollm2_dir):
    config = PGConfig(epochs=1, minibatch_size=4)
    policy = load_policy(smollm2_dir, config=config, trainable=True)
    rollouts = generate(
        policy, ["Say hi.", "Name a colour.", "Count to three."], max_new_tokens=12, seed=0, precision="bf16"
    )
    packed = pack_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, _ = sequence_logprobs(policy.model, packed.input_ids, packed.attention_mask, packed.completion_mask)
    d = torch.cat([row[mask] - torch.tensor(r.behaviour_logprobs) for r, row, mask in zip(rollouts, logprobs, packed.completion_mask)])
    assert float((torch.expm1(d) - d).mean()) < 0.01  # bench/generate.py measures ~1e-3 per token
    batch = TrainBatch(
        [r.prompt_ids for r in rollouts],
        [r.completion_ids for r in rollouts],
        [r.behaviour_logprobs for r in rollouts],
        [1.0, -1.0, 0.0],
        [0, 1, 2],
    )
    metrics = update(policy, batch, config)
    assert abs(metrics["policy/ratio_mean"] - 1) < 0.05  # against the trainer's own logprobs
    assert 0.8 < metrics["policy/tis_weight_mean"] < 1.2 and metrics["policy/tis_truncated"] < 0.1
