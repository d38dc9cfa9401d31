"""The prefill in length buckets (pgcore.rollout.length_buckets, _prefill): each group of
prompts is left-padded only to its own longest, instead of the whole batch to the longest.

Reference: the one-group prefill (``PREFILL_BUCKET_COST`` huge), Hugging Face ``generate``
(greedy) and the trainer's logprobs, on the tiny random Llama in fp32.
"""

import itertools

import pytest
import torch
from torch.testing import assert_close

from pgcore import rollout
from pgcore.logprobs import score_completions
from pgcore.rollout import generate, left_pad, length_buckets, render_prompt, sampling_model

EOS = 258
PROMPTS = ["hi", "a much longer prompt than the first one", "mid length", "", "x" * 30, "two words", "y" * 12]


def _cost(lengths, groups, cost):
    return sum(len(g) * max(lengths[r] for r in g) for g in groups) + cost * len(groups)


def _partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first]] + part
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1 :]


@pytest.mark.parametrize("cost", [0, 3, 10, 1000])
def test_length_buckets_find_the_cheapest_grouping_of_all(cost):
    generator = torch.Generator().manual_seed(cost)
    for _ in range(5):
        lengths = torch.randint(1, 20, (6,), generator=generator).tolist()
        groups = length_buckets(lengths, cost)
        assert sorted(itertools.chain(*groups)) == list(range(6))  # every row once
        best = min(_cost(lengths, p, cost) for p in _partitions(list(range(6))))
        assert _cost(lengths, groups, cost) == best


def test_length_buckets_edges():
    assert length_buckets([], 5) == []
    assert length_buckets([4, 9, 4], 10**9) == [[0, 1, 2]]  # a forward is dear: one group
    assert length_buckets([4, 9, 4], 0) == [[0, 2], [1]]  # free: one group per length
    assert length_buckets([7, 7, 7], 0) == [[0, 1, 2]]


def _prefill(policy, prompt_ids, cost, monkeypatch):
    monkeypatch.setattr(rollout, "PREFILL_BUCKET_COST", cost)
    model = sampling_model(policy)
    with torch.no_grad():
        return rollout._prefill(model.model, model.lm_head, prompt_ids, policy.tokenizer.pad_token_id, "cpu", torch.float32)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_a_bucketed_prefill_gives_every_row_the_one_group_prefills_caches_and_logits(frozen_policy, monkeypatch, share_prefix):
    if not share_prefix:
        monkeypatch.setattr(rollout, "SHARED_PREFIX_MIN_SAVED", 10**9)
    prompt_ids = [render_prompt(frozen_policy.tokenizer, p) for p in PROMPTS]
    ref_logits, ref_keys, ref_values, ref_valid = _prefill(frozen_policy, prompt_ids, 10**9, monkeypatch)
    calls = []
    real = rollout._forward_fast
    monkeypatch.setattr(rollout, "_forward_fast", lambda *a, **k: calls.append(tuple(a[2].shape)) or real(*a, **k))
    logits, keys, values, valid = _prefill(frozen_policy, prompt_ids, 0, monkeypatch)
    widths = [s for _, s in calls if s > 1 or len(calls) > 1]
    assert len(calls) >= 4 and max(widths) > min(widths)  # several groups, each padded to its own longest
    assert torch.equal(valid, ref_valid)  # the same layout: the prompt right-aligned at the cache's end
    assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for layer in range(len(keys)):
        assert torch.isfinite(keys[layer]).all() and torch.isfinite(values[layer]).all()  # no garbage a mask could turn into NaN
        for r in range(len(prompt_ids)):
            assert_close(keys[layer][r][:, valid[r]], ref_keys[layer][r][:, ref_valid[r]], rtol=1e-5, atol=1e-5)
            assert_close(values[layer][r][:, valid[r]], ref_values[layer][r][:, ref_valid[r]], rtol=1e-5, atol=1e-5)


def _hf_greedy(policy, prompts, max_new_tokens):
    ids, mask = left_pad([render_prompt(policy.tokenizer, p) for p in prompts], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        out = policy.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
            pad_token_id=policy.tokenizer.pad_token_id, eos_token_id=EOS,
        )
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in out[:, ids.shape[1] :].tolist()]


def test_bucketed_greedy_tokens_equal_hugging_face_generate_with_an_empty_prompt_and_refills(frozen_policy, monkeypatch):
    monkeypatch.setattr(rollout, "PREFILL_BUCKET_COST", 0)
    rollouts = generate(frozen_policy, PROMPTS * 2, max_new_tokens=15, greedy=True, precision="fp32", batch_size=6)
    assert [r.completion_ids for r in rollouts] == _hf_greedy(frozen_policy, PROMPTS * 2, 15)


def test_a_seed_gives_the_same_rollouts_with_and_without_buckets_and_eos_ends_them(frozen_policy, monkeypatch):
    def add_eos_bias(module, inputs, logits):
        bias = torch.zeros(logits.shape[-1])
        bias[EOS] = 4.0
        return logits + bias

    frozen_policy.model.get_output_embeddings().register_forward_hook(add_eos_bias)
    runs = {}
    for cost in (0, 10**9):
        monkeypatch.setattr(rollout, "PREFILL_BUCKET_COST", cost)
        runs[cost] = generate(frozen_policy, PROMPTS * 3, max_new_tokens=12, seed=7, precision="fp32", batch_size=8)
    bucketed, one = runs[0], runs[10**9]
    assert [r.completion_ids for r in bucketed] == [r.completion_ids for r in one]
    assert any(r.finished for r in bucketed) and any(not r.finished for r in bucketed)
    for r in bucketed:
        if r.finished:
            assert r.completion_ids[-1] == EOS and EOS not in r.completion_ids[:-1]
    with torch.no_grad():
        lp, _, mask = score_completions(
            frozen_policy.model, [r.prompt_ids for r in bucketed], [r.completion_ids for r in bucketed], EOS, with_entropy=False
        )
    for r, o, row, m in zip(bucketed, one, lp, mask):
        assert_close(torch.tensor(r.behaviour_logprobs), torch.tensor(o.behaviour_logprobs), rtol=0, atol=1e-5)
        assert_close(torch.tensor(r.behaviour_logprobs), row[m], rtol=1e-5, atol=1e-5)  # the trainer's, exactly up to rounding


def test_a_bucketed_prompt_at_the_context_limit_stops_there_beside_short_ones(frozen_policy, monkeypatch):
    monkeypatch.setattr(rollout, "PREFILL_BUCKET_COST", 0)
    limit = frozen_policy.model.config.max_position_embeddings
    base = len(render_prompt(frozen_policy.tokenizer, ""))
    near = "y" * (limit - 1 - base)
    assert len(render_prompt(frozen_policy.tokenizer, near)) == limit - 1
    rows = generate(frozen_policy, [near, "hi", "mid length"], max_new_tokens=6, greedy=True, precision="fp32", batch_size=3)
    assert len(rows[0].completion_ids) == 1 and not rows[0].finished  # one token fills the context
    assert rows[0].completion_ids == _hf_greedy(frozen_policy, [near], 1)[0]
    assert [r.completion_ids for r in rows[1:]] == _hf_greedy(frozen_policy, ["hi", "mid length"], 6)
