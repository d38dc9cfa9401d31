"""Prefix caching (pgcore.prefix_cache) against full prefills: same greedy tokens and logprobs.

Prompts rendered with the chat template start with the cached prefix; a raw prompt does not,
and a prompt equal to the prefix has no token of its own after it: both are prefilled in
full, in the same group as the others.
"""

import pytest
import torch
from torch.testing import assert_close

from test_smollm2 import smollm2_dir  # noqa: F401 - fixture

from pgcore import rollout
from pgcore.policy import load_policy
from pgcore.prefix_cache import PrefixCache, chat_prefix_ids
from pgcore.rollout import eos_token_ids, render_prompt, sample_continuous, sampling_model

TEXTS = ["hi", "a much longer prompt than the first one", "mid length", "x" * 30, "a b c d e f g"]


@pytest.fixture
def model(frozen_policy):
    return sampling_model(frozen_policy, dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture
def prompts(frozen_policy):
    """Chat prompts, a raw prompt without the template, and the bare prefix."""
    tokenizer = frozen_policy.tokenizer
    prefix = chat_prefix_ids(tokenizer)
    raw = list(tokenizer("no template here")["input_ids"])
    return [render_prompt(tokenizer, t) for t in TEXTS] + [raw, prefix]


def _sample(policy, model, prompts, prefix, batch_size):
    out = sample_continuous(
        model, prompts, eos_ids=eos_token_ids(policy), pad_id=policy.tokenizer.pad_token_id, max_new_tokens=10,
        generator=torch.Generator().manual_seed(0), greedy=True, batch_size=batch_size, prefix=prefix,
    )
    return {i: (ids, lps) for i, ids, lps, _ in out}


def test_the_chat_prefix_is_the_template_up_to_the_users_text(frozen_policy):
    tokenizer = frozen_policy.tokenizer
    prefix = chat_prefix_ids(tokenizer)
    assert tokenizer.decode(prefix) == "<|im_start|>user\n"
    assert all(render_prompt(tokenizer, t)[: len(prefix)] == prefix for t in TEXTS)


def test_a_tokenizer_without_a_chat_template_has_no_prefix_and_nothing_is_cached(frozen_policy, model, prompts):
    frozen_policy.tokenizer.chat_template = None
    cache = PrefixCache(chat_prefix_ids(frozen_policy.tokenizer))
    assert cache.prefix_ids == [] and not any(cache.matches(p) for p in prompts)


@pytest.mark.parametrize("batch_size", [7, 2])
def test_greedy_tokens_and_logprobs_equal_full_prefills(frozen_policy, model, prompts, batch_size):
    cache = PrefixCache(chat_prefix_ids(frozen_policy.tokenizer))
    full = _sample(frozen_policy, model, prompts, None, batch_size)
    cached = _sample(frozen_policy, model, prompts, cache, batch_size)
    assert cache.hits == len(TEXTS)  # the raw prompt and the bare prefix were prefilled in full
    assert cache.builds == 1
    assert sorted(cached) == list(range(len(prompts)))
    for i in full:
        assert cached[i][0] == full[i][0], i
        assert_close(torch.tensor(cached[i][1]), torch.tensor(full[i][1]), atol=1e-5, rtol=1e-5)


def test_a_mixed_group_gives_the_logits_of_a_full_prefill_in_the_prompts_order(frozen_policy, model, prompts):
    cache = PrefixCache(chat_prefix_ids(frozen_policy.tokenizer))
    pad = frozen_policy.tokenizer.pad_token_id
    group = [prompts[5], prompts[1], prompts[6], prompts[0]]  # raw, chat, bare prefix, chat
    full_logits, _, _, full_valid = rollout._prefill(model.model, model.lm_head, group, pad, "cpu", torch.float32)
    logits, keys, values, valid = cache.prefill(model.model, model.lm_head, group, pad, "cpu", torch.float32)
    assert_close(logits, full_logits, atol=1e-5, rtol=1e-5)
    assert valid.sum(1).tolist() == [len(p) for p in group] == full_valid.sum(1).tolist()
    assert keys[0].shape[:3] == (4, keys[0].shape[1], valid.shape[1]) and values[0].shape == keys[0].shape


def test_the_cached_prefix_is_rebuilt_for_changed_weights_and_for_another_model(frozen_policy, model, prompts, tiny_path):
    cache = PrefixCache(chat_prefix_ids(frozen_policy.tokenizer))
    before = _sample(frozen_policy, model, prompts, cache, 7)
    assert cache.cached_for(model.model) and cache.builds == 1
    with torch.no_grad():
        for p in model.model.layers[0].parameters():
            p.mul_(1.5)  # an in-place change, as a load or an optimiser step makes
    assert not cache.cached_for(model.model)
    changed = _sample(frozen_policy, model, prompts, cache, 7)
    assert cache.builds == 2
    assert changed != before
    assert changed.keys() == _sample(frozen_policy, model, prompts, None, 7).keys()
    for i, (ids, lps) in _sample(frozen_policy, model, prompts, None, 7).items():
        assert changed[i][0] == ids
        assert_close(torch.tensor(changed[i][1]), torch.tensor(lps), atol=1e-5, rtol=1e-5)

    other = load_policy(tiny_path)  # a new version: another module, the original weights
    other_model = sampling_model(other, dtype=torch.float32, device=torch.device("cpu"))
    again = _sample(other, other_model, prompts, cache, 7)
    assert cache.builds == 3 and cache.cached_for(other_model.model) and not cache.cached_for(model.model)
    assert [again[i][0] for i in sorted(again)] == [before[i][0] for i in sorted(before)]


@pytest.mark.smollm2
def test_smollm2s_system_prompt_is_cached_and_its_greedy_answers_are_unchanged(smollm2_dir):
    policy = load_policy(smollm2_dir)
    tokenizer = policy.tokenizer
    prefix = chat_prefix_ids(tokenizer)
    text = tokenizer.decode(prefix)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant") and text.endswith("<|im_start|>user\n")
    prompts = [render_prompt(tokenizer, t) for t in ("Name a film about grief.", "2+2?", "Write a haiku about rain.")]
    prompts += [list(tokenizer("Once upon a time")["input_ids"]), prefix]
    model = sampling_model(policy, dtype=torch.float32, device=torch.device("cpu"))
    cache = PrefixCache(prefix)
    full, cached = (_sample(policy, model, prompts, p, len(prompts)) for p in (None, cache))
    assert cache.hits == 3
    for i in full:
        assert cached[i][0] == full[i][0], i
        assert_close(torch.tensor(cached[i][1]), torch.tensor(full[i][1]), atol=1e-4, rtol=1e-4)
