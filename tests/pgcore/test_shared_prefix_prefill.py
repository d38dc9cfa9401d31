"""The prefill runs the tokens all prompts share once (pgcore.rollout._prefill, shared_prefix_length).

Reference: the same prefill with sharing switched off (one left-padded forward), and the
Hugging Face / generic paths for whole rollouts, on the tiny random Llama in fp32.
"""

import pytest
import torch
from torch.testing import assert_close

from pgcore import rollout
from pgcore.rollout import generate, render_prompt, sampling_model, shared_prefix_length

PROMPTS = ["hi", "a much longer prompt than the first one", "mid length", "", "x" * 30]


@pytest.mark.parametrize(
    ("prompt_ids", "expected"),
    [
        ([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]], 2),
        ([[1, 2, 3], [1, 2, 3]], 2),  # identical prompts keep one token each
        ([[1, 2, 3], [1, 2]], 1),  # one prompt is the other's head
        ([[5, 2], [1, 2]], 0),
        ([[1, 2, 3]], 0),  # nothing to share with
        ([], 0),
    ],
)
def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own(prompt_ids, expected):
    assert shared_prefix_length(prompt_ids) == expected


def _prefill(policy, prompt_ids):
    model = sampling_model(policy)
    with torch.no_grad():
        return rollout._prefill(model.model, model.lm_head, prompt_ids, policy.tokenizer.pad_token_id, "cpu", torch.float32)


def test_a_shared_prefix_run_once_gives_every_row_the_caches_and_logits_of_a_full_prefill(frozen_policy, monkeypatch):
    prompt_ids = [render_prompt(frozen_policy.tokenizer, p) for p in PROMPTS]
    shared = shared_prefix_length(prompt_ids)
    assert shared >= 4  # the chat template's head: the path under test runs
    logits, keys, values, valid = _prefill(frozen_policy, prompt_ids)
    calls = []
    real = rollout._forward_fast
    monkeypatch.setattr(rollout, "_forward_fast", lambda *a: calls.append(a[2].shape) or real(*a))
    monkeypatch.setattr(rollout, "SHARED_PREFIX_MIN_SAVED", 10**9)
    monkeypatch.setattr(rollout, "PREFILL_BUCKET_COST", 10**9)  # and one left-padded group
    ref_logits, ref_keys, ref_values, ref_valid = _prefill(frozen_policy, prompt_ids)
    assert len(calls) == 1 and calls[0] == (len(prompt_ids), max(map(len, prompt_ids)))  # the unshared reference
    assert valid.shape[1] == ref_valid.shape[1]  # same width: the prefix columns are real in every row
    assert valid.sum(1).tolist() == [len(p) for p in prompt_ids] == ref_valid.sum(1).tolist()
    assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for layer in range(len(keys)):
        for r in range(len(prompt_ids)):
            # the prompt's columns, in order, hold the same keys and values
            assert_close(keys[layer][r][:, valid[r]], ref_keys[layer][r][:, ref_valid[r]], rtol=1e-5, atol=1e-5)
            assert_close(values[layer][r][:, valid[r]], ref_values[layer][r][:, ref_valid[r]], rtol=1e-5, atol=1e-5)


def test_sampling_with_and_without_the_shared_prefix_gives_the_same_rollouts(frozen_policy, monkeypatch):
    shared = generate(frozen_policy, PROMPTS * 2, max_new_tokens=12, seed=3, precision="fp32", batch_size=4)
    monkeypatch.setattr(rollout, "SHARED_PREFIX_MIN_SAVED", 10**9)
    alone = generate(frozen_policy, PROMPTS * 2, max_new_tokens=12, seed=3, precision="fp32", batch_size=4)
    assert [r.completion_ids for r in shared] == [r.completion_ids for r in alone]
    for a, b in zip(shared, alone):
        assert_close(torch.tensor(a.behaviour_logprobs), torch.tensor(b.behaviour_logprobs), rtol=0, atol=1e-5)
