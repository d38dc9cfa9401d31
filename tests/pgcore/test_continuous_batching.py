"""Continuous batching (pgcore.rollout.sample_continuous / generate_stream) against the reference paths.

More prompts than slots: a finished row's slot is refilled with a waiting prompt that is
prefilled on its own and then decodes beside rows at other cache columns and positions.
References: Hugging Face ``generate`` (greedy), pgcore's generic path (each prompt's own
batch) and a teacher-forced trainer forward (``score_completions``) for the logprobs.
"""

import pytest
import torch
from torch.testing import assert_close

from pgcore import rollout
from pgcore.logprobs import score_completions
from pgcore.rollout import eos_token_ids, generate, generate_stream, render_prompt, sample_continuous, sampling_model

EOS = 258
PROMPTS = ["hi", "a much longer prompt than the first one", "mid length", "", "x" * 30, "ok", "a b c d e f g"]


@pytest.fixture
def eos_prone(frozen_policy):
    """+4 on the EOS logit: completions end at different steps, so slots free up and refill."""

    def add_eos_bias(module, inputs, logits):
        bias = torch.zeros(logits.shape[-1])
        bias[EOS] = 4.0
        return logits + bias

    frozen_policy.model.get_output_embeddings().register_forward_hook(add_eos_bias)
    return frozen_policy


@pytest.fixture
def prefills(monkeypatch):
    """Counts prefills (each is a group of waiting prompts taking free slots)."""
    calls = []
    real = rollout._prefill

    def counted(inner, lm_head, prompt_ids, *args):
        calls.append(len(prompt_ids))
        return real(inner, lm_head, prompt_ids, *args)

    monkeypatch.setattr(rollout, "_prefill", counted)
    return calls


def _trainer_logprobs(policy, rollouts):
    with torch.no_grad():
        lp, _, mask = score_completions(
            policy.model, [r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts], EOS, with_entropy=False
        )
    return [row[m] for row, m in zip(lp, mask)]


def _ids(policy, texts):
    return [render_prompt(policy.tokenizer, t) for t in texts]


def test_greedy_tokens_with_two_slots_equal_each_prompt_sampled_alone(eos_prone, prefills):
    prompts = PROMPTS * 2
    continuous = generate(eos_prone, prompts, max_new_tokens=12, greedy=True, precision="fp32", batch_size=2)
    assert len(prefills) > 2  # slots were refilled, not one batch
    alone = generate(eos_prone, prompts, max_new_tokens=12, greedy=True, fast=False, batch_size=1)
    assert [r.completion_ids for r in continuous] == [r.completion_ids for r in alone]
    assert any(r.finished for r in continuous) and any(not r.finished for r in continuous)
    for a, b in zip(continuous, alone):
        assert_close(torch.tensor(a.behaviour_logprobs), torch.tensor(b.behaviour_logprobs), atol=1e-5, rtol=1e-5)


def test_greedy_tokens_equal_hugging_face_generate_with_a_lora_adapter(drifted_lora_policy):
    from test_generation_paths import _hf_greedy

    rollouts = generate(drifted_lora_policy, PROMPTS, max_new_tokens=10, greedy=True, precision="fp32", batch_size=3)
    assert [r.completion_ids for r in rollouts] == _hf_greedy(drifted_lora_policy, PROMPTS, 10)


def test_sampled_behaviour_logprobs_equal_a_teacher_forced_trainer_forward(eos_prone, prefills):
    rollouts = generate(eos_prone, PROMPTS * 3, max_new_tokens=10, seed=5, precision="fp32", batch_size=4)
    assert len(prefills) > 1
    for r, trainer in zip(rollouts, _trainer_logprobs(eos_prone, rollouts)):
        assert_close(torch.tensor(r.behaviour_logprobs), trainer, atol=1e-5, rtol=1e-5)


def test_bf16_continuous_sampling_differs_from_the_trainer_by_a_small_measured_amount(drifted_lora_policy):
    rollouts = generate(drifted_lora_policy, PROMPTS * 2, max_new_tokens=10, seed=0, precision="bf16", batch_size=3)
    d = torch.cat(_trainer_logprobs(drifted_lora_policy, rollouts)) - torch.cat(
        [torch.tensor(r.behaviour_logprobs) for r in rollouts]
    )
    assert 0 < float((torch.expm1(d) - d).mean()) < 0.05  # corrected by TIS in the trainer (test_losses)
    assert float(d.abs().max()) < 1.0


def test_completions_end_at_their_first_eos_or_the_token_cap_and_are_yielded_as_they_end(eos_prone):
    prompts = PROMPTS * 3
    seen = list(generate_stream(eos_prone, prompts, max_new_tokens=12, seed=3, precision="fp32", batch_size=4))
    assert sorted(i for i, _ in seen) == list(range(len(prompts)))  # every prompt once
    assert [i for i, _ in seen] != list(range(len(prompts)))  # short completions come out first
    for i, r in seen:
        assert r.prompt_ids == render_prompt(eos_prone.tokenizer, prompts[i])
        if r.finished:
            assert r.completion_ids[-1] == EOS and EOS not in r.completion_ids[:-1]
        else:
            assert len(r.completion_ids) == 12 and EOS not in r.completion_ids
        assert len(r.behaviour_logprobs) == len(r.completion_ids)


def test_the_same_seed_and_batch_size_reproduce_the_rollouts(frozen_policy):
    a = generate(frozen_policy, PROMPTS, max_new_tokens=8, seed=11, precision="fp32", batch_size=3)
    b = generate(frozen_policy, PROMPTS, max_new_tokens=8, seed=11, precision="fp32", batch_size=3)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]


def test_a_prompt_at_the_context_limit_takes_its_one_token_and_frees_its_slot(frozen_policy, prefills):
    from test_generation_paths import _hf_greedy, _prompt_of

    limit = frozen_policy.model.config.max_position_embeddings
    at_limit = _prompt_of(frozen_policy, limit - 1)
    prompts = [at_limit, "hi", "mid length", at_limit]
    rows = generate(frozen_policy, prompts, max_new_tokens=6, greedy=True, precision="fp32", batch_size=2)
    assert len(rows[0].completion_ids) == 1 and len(rows[3].completion_ids) == 1
    assert rows[0].completion_ids == _hf_greedy(frozen_policy, [at_limit], 1)[0]
    assert [r.completion_ids for r in rows[1:3]] == _hf_greedy(frozen_policy, ["hi", "mid length"], 6)
    assert len(prefills) >= 2


def test_an_empty_prompt_is_refused_with_a_clear_error_and_no_prompts_yield_nothing(frozen_policy):
    model = sampling_model(frozen_policy, dtype=torch.float32)
    common = dict(eos_ids=eos_token_ids(frozen_policy), pad_id=EOS, max_new_tokens=4, generator=torch.Generator())
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        list(sample_continuous(model, [[1, 2], []], **common))
    assert list(sample_continuous(model, [], **common)) == []
    assert generate(frozen_policy, [], max_new_tokens=4) == []
    for bad in (dict(batch_size=0), dict(refill_fraction=0.0), dict(compact_fraction=1.5)):
        with pytest.raises(ValueError, match="batch_size"):
            list(sample_continuous(model, [[1, 2]], **common, **bad))
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(sample_continuous(model, [[1, 2]], **{**common, "max_new_tokens": 0}))


def test_errors_are_raised_when_generate_stream_is_called_before_anything_is_sampled(frozen_policy):
    limit = frozen_policy.model.config.max_position_embeddings
    with pytest.raises(ValueError, match="context limit"):
        generate_stream(frozen_policy, ["x" * (limit + 5)], max_new_tokens=2)  # raised at the call, not on iteration


def test_closing_the_stream_early_puts_the_policy_back_in_its_mode(frozen_policy):
    frozen_policy.model.train()
    stream = generate_stream(frozen_policy, PROMPTS, max_new_tokens=4, seed=0, precision="fp32", batch_size=2)
    next(stream)
    assert not frozen_policy.model.training
    stream.close()
    assert frozen_policy.model.training


def _arriving(model, policy, first, later, *, after_steps, cap, greedy, seed=0, batch_size=3):
    """Samples ``first`` and feeds ``later`` through ``incoming`` once ``after_steps`` polls have passed."""
    polls, arrived = [0], []

    def incoming():
        polls[0] += 1
        if polls[0] == after_steps and not arrived:
            arrived.append(polls[0])
            return [(render_prompt(policy.tokenizer, t), cap) for t in later]
        return []

    generator = torch.Generator().manual_seed(seed)
    out = list(sample_continuous(
        model, [render_prompt(policy.tokenizer, t) for t in first], eos_ids=eos_token_ids(policy), pad_id=EOS,
        max_new_tokens=12, generator=generator, greedy=greedy, batch_size=batch_size, refill_fraction=0.3,
        incoming=incoming))
    assert arrived, "the run ended before the later prompts arrived"
    return {i: (ids, lps, done) for i, ids, lps, done in out}


def test_a_prompt_arriving_mid_run_gets_the_same_greedy_tokens_as_alone_even_wider_than_the_cache(frozen_policy):
    model = sampling_model(frozen_policy, dtype=torch.float32)
    first, later = ["hi", "ok"], ["x" * 30, "a much longer prompt than the first one", "mid length"]
    out = _arriving(model, frozen_policy, first, later, after_steps=4, cap=20, greedy=True)
    assert sorted(out) == list(range(5))  # later prompts take the next indices
    alone_first = generate(frozen_policy, first, max_new_tokens=12, greedy=True, fast=False, batch_size=1)
    alone_later = generate(frozen_policy, later, max_new_tokens=20, greedy=True, fast=False, batch_size=1)
    for i, r in enumerate(alone_first + alone_later):
        ids, lps, done = out[i]
        assert ids == r.completion_ids and done == r.finished  # each prompt's own cap (12, then 20)
        assert_close(torch.tensor(lps), torch.tensor(r.behaviour_logprobs), atol=1e-5, rtol=1e-5)
    assert max(len(out[i][0]) for i in range(2, 5)) > 12  # the cache grew for the wider prompt and cap


def test_sampled_prompts_arriving_mid_run_record_exact_behaviour_logprobs(eos_prone):
    model = sampling_model(eos_prone, dtype=torch.float32)
    out = _arriving(model, eos_prone, PROMPTS[:3], PROMPTS[4:] * 2, after_steps=3, cap=10, greedy=False, seed=4)
    texts = PROMPTS[:3] + PROMPTS[4:] * 2
    from types import SimpleNamespace

    rollouts = [SimpleNamespace(prompt_ids=render_prompt(eos_prone.tokenizer, t), completion_ids=out[i][0],
                        behaviour_logprobs=out[i][1], finished=out[i][2]) for i, t in enumerate(texts)]
    for r, trainer in zip(rollouts, _trainer_logprobs(eos_prone, rollouts)):
        assert_close(torch.tensor(r.behaviour_logprobs), trainer, atol=1e-5, rtol=1e-5)
    assert all(len(r.completion_ids) <= 10 for r in rollouts[3:])


def test_incoming_alone_starts_from_nothing_returns_when_idle_and_refuses_bad_prompts(frozen_policy):
    model = sampling_model(frozen_policy, dtype=torch.float32)
    common = dict(eos_ids=eos_token_ids(frozen_policy), pad_id=EOS, max_new_tokens=4, generator=torch.Generator(),
                  greedy=True)
    feed = [[([5, 6, 7], 3)], [], [([8, 9], 2)]]
    out = list(sample_continuous(model, [], **common, incoming=lambda: feed.pop(0) if feed else []))
    assert sorted((i, len(ids)) for i, ids, _, _ in out) == [(0, 3), (1, 2)] and not feed
    assert list(sample_continuous(model, [], **common, incoming=lambda: [])) == []
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        list(sample_continuous(model, [[1, 2]], **common, incoming=lambda: [([], 3)]))
    with pytest.raises(ValueError, match="at least 1"):
        list(sample_continuous(model, [], **common, incoming=lambda: [([1, 2], 0)]))


@pytest.mark.parametrize("fast", [True, False])
def test_generate_stream_takes_prompts_that_arrive_while_it_runs_as_if_given_at_the_start(eos_prone, fast):
    """The pool refill's use: more prompts handed in as rows free up, same greedy completions."""
    first, later = PROMPTS[:3], ["late one", "another late prompt"]
    calls = [0]

    def incoming():
        calls[0] += 1
        return later if calls[0] == 2 else []

    seen = dict(generate_stream(
        eos_prone, first, max_new_tokens=12, precision="fp32", batch_size=2, greedy=True, fast=fast, incoming=incoming
    ))
    alone = generate(eos_prone, first + later, max_new_tokens=12, precision="fp32", batch_size=1, greedy=True, fast=fast)
    assert sorted(seen) == list(range(5))  # the late prompts got the next indices
    assert [seen[i].completion_ids for i in range(5)] == [r.completion_ids for r in alone]
    assert [seen[i].prompt_ids for i in range(5)] == [r.prompt_ids for r in alone]
    with pytest.raises(ValueError, match="context limit"):
        limit = eos_prone.model.config.max_position_embeddings
        list(generate_stream(eos_prone, ["hi"], max_new_tokens=2, fast=fast, incoming=lambda: ["x" * (limit + 5)]))
