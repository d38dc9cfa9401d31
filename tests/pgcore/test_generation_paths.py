"""The fast sampling path (pgcore.rollout.sample_continuous) against the reference paths.

Reference: Hugging Face ``generate`` (greedy) and pgcore's generic path (the model's own
forward), on the tiny random Llama. fp32 must agree exactly up to float rounding; bf16 is
measured against the trainer's logprobs (the trainer corrects it with truncated importance
sampling, see test_losses).
"""

import pytest
import torch
from torch.testing import assert_close

from pgcore import rollout
from pgcore.logprobs import score_completions
from pgcore.rollout import generate, left_pad, render_prompt, sampling_dtype, sampling_model

EOS = 258
PROMPTS = ["hi", "a much longer prompt than the first one", "mid length", "", "x" * 30]


def _hf_greedy(policy, prompts, max_new_tokens):
    ids, mask = left_pad([render_prompt(policy.tokenizer, p) for p in prompts], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        out = policy.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=policy.tokenizer.pad_token_id,
            eos_token_id=EOS,
        )
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def _trainer_logprobs(policy, rollouts):
    with torch.no_grad():
        lp, _, mask = score_completions(
            policy.model, [r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts], EOS, with_entropy=False
        )
    return [row[m] for row, m in zip(lp, mask)]


@pytest.fixture
def eos_prone(frozen_policy):
    """+4 on the EOS logit, so some completions end early and rows leave the batch."""

    def add_eos_bias(module, inputs, logits):
        bias = torch.zeros(logits.shape[-1])
        bias[EOS] = 4.0
        return logits + bias

    frozen_policy.model.get_output_embeddings().register_forward_hook(add_eos_bias)
    return frozen_policy


def test_fast_greedy_tokens_equal_hugging_face_generate_with_mixed_prompt_lengths(frozen_policy):
    rollouts = generate(frozen_policy, PROMPTS, max_new_tokens=20, greedy=True, precision="fp32", batch_size=5)
    assert [r.completion_ids for r in rollouts] == _hf_greedy(frozen_policy, PROMPTS, 20)


def test_fast_greedy_tokens_equal_hugging_face_generate_with_a_lora_adapter(drifted_lora_policy):
    rollouts = generate(drifted_lora_policy, PROMPTS, max_new_tokens=20, greedy=True, precision="fp32", batch_size=5)
    assert [r.completion_ids for r in rollouts] == _hf_greedy(drifted_lora_policy, PROMPTS, 20)


def test_a_left_padded_batch_gives_each_prompt_what_it_gets_alone(frozen_policy):
    together = generate(frozen_policy, PROMPTS, max_new_tokens=15, greedy=True, precision="fp32", batch_size=5)
    alone = generate(frozen_policy, PROMPTS, max_new_tokens=15, greedy=True, precision="fp32", batch_size=1)
    assert [r.completion_ids for r in together] == [r.completion_ids for r in alone]
    for a, b in zip(together, alone):
        assert_close(torch.tensor(a.behaviour_logprobs), torch.tensor(b.behaviour_logprobs), atol=1e-5, rtol=1e-5)


def test_fast_fp32_behaviour_logprobs_are_the_trainers_with_a_merged_lora_adapter(drifted_lora_policy):
    rollouts = generate(drifted_lora_policy, PROMPTS * 2, max_new_tokens=12, seed=0, precision="fp32", batch_size=4)
    for r, trainer in zip(rollouts, _trainer_logprobs(drifted_lora_policy, rollouts)):
        assert_close(torch.tensor(r.behaviour_logprobs), trainer, atol=1e-5, rtol=1e-5)


def test_bf16_behaviour_logprobs_differ_from_the_trainers_by_a_small_measured_amount(drifted_lora_policy):
    rollouts = generate(drifted_lora_policy, PROMPTS * 2, max_new_tokens=12, seed=0, precision="bf16", batch_size=4)
    sampler = torch.cat([torch.tensor(r.behaviour_logprobs) for r in rollouts])
    trainer = torch.cat(_trainer_logprobs(drifted_lora_policy, rollouts))
    d = trainer - sampler
    kl = float((torch.expm1(d) - d).mean())
    assert 0 < kl < 0.05  # measured ~1e-3 on SmolLM2 (bench/generate.py); the tiny model's logits are larger
    assert float(d.abs().max()) < 1.0  # every ratio is within e, so min(ratio, 2) rarely truncates


def test_completions_stop_at_their_first_eos_and_finished_rows_leave_the_batch(eos_prone):
    kept = generate(eos_prone, PROMPTS * 4, max_new_tokens=12, greedy=False, seed=3, precision="fp32", batch_size=20)
    finished = [r for r in kept if r.finished]
    assert finished and any(not r.finished for r in kept)
    for r in kept:
        if r.finished:
            assert r.completion_ids[-1] == EOS and EOS not in r.completion_ids[:-1]
        else:
            assert len(r.completion_ids) == 12 and EOS not in r.completion_ids
    for r, trainer in zip(kept, _trainer_logprobs(eos_prone, kept)):
        assert_close(torch.tensor(r.behaviour_logprobs), trainer, atol=1e-5, rtol=1e-5)


def test_compacting_the_batch_changes_no_greedy_token(eos_prone, monkeypatch):
    prompts = PROMPTS * 4
    compacted = generate(eos_prone, prompts, max_new_tokens=12, greedy=True, precision="fp32", batch_size=20)
    fast = rollout.sample_continuous
    monkeypatch.setattr(rollout, "sample_continuous", lambda *a, **k: fast(*a, **{**k, "compact_fraction": 1.0}))
    never = generate(eos_prone, prompts, max_new_tokens=12, greedy=True, precision="fp32", batch_size=20)
    generic = generate(eos_prone, prompts, max_new_tokens=12, greedy=True, fast=False, batch_size=20)
    assert [r.completion_ids for r in compacted] == [r.completion_ids for r in never] == [r.completion_ids for r in generic]
    assert any(r.finished for r in compacted)


def test_an_empty_prompt_samples_after_the_chat_template(frozen_policy):
    [r] = generate(frozen_policy, [""], max_new_tokens=5, greedy=True, precision="fp32")
    assert r.prompt_ids == render_prompt(frozen_policy.tokenizer, "")
    assert [r.completion_ids] == _hf_greedy(frozen_policy, [""], 5)


def _prompt_of(policy, n_tokens):
    base = len(render_prompt(policy.tokenizer, ""))
    text = "y" * (n_tokens - base)
    assert len(render_prompt(policy.tokenizer, text)) == n_tokens
    return text


def test_a_prompt_at_the_context_limit_stops_there_while_a_short_one_goes_on(frozen_policy):
    limit = frozen_policy.model.config.max_position_embeddings
    near = _prompt_of(frozen_policy, limit - 3)
    long_row, short_row = generate(frozen_policy, [near, "hi"], max_new_tokens=10, greedy=True, precision="fp32", batch_size=2)
    assert len(long_row.completion_ids) == 3 and not long_row.finished
    assert len(short_row.completion_ids) == 10 or short_row.finished
    assert long_row.completion_ids == _hf_greedy(frozen_policy, [near], 3)[0]
    with pytest.raises(ValueError, match="context limit"):
        generate(frozen_policy, [_prompt_of(frozen_policy, limit)], max_new_tokens=2)


def test_auto_precision_is_bf16_only_where_bf16_is_native(monkeypatch):
    import pgcore.trainer

    cpu = torch.device("cpu")
    monkeypatch.setattr(pgcore.trainer, "native_bf16_matmul", lambda: False)
    assert sampling_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(pgcore.trainer, "native_bf16_matmul", lambda: True)
    assert sampling_dtype("auto", cpu) == torch.bfloat16
    assert sampling_dtype("fp32", cpu) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        sampling_dtype("fp8", cpu)


def test_the_merged_copy_is_rebuilt_after_an_optimiser_step_and_reused_otherwise(drifted_lora_policy):
    first = sampling_model(drifted_lora_policy, dtype=torch.float32)
    assert sampling_model(drifted_lora_policy, dtype=torch.float32) is first
    lora_b = next(p for n, p in drifted_lora_policy.model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b.add_(0.1)
    second = sampling_model(drifted_lora_policy, dtype=torch.float32)
    assert second is not first
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert_close(second(input_ids=ids).logits, drifted_lora_policy.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_fp32_greedy_tokens_equal_the_cpus(frozen_policy):
    gpu = generate(frozen_policy, PROMPTS, max_new_tokens=10, greedy=True, precision="fp32", device="cuda")
    cpu = generate(frozen_policy, PROMPTS, max_new_tokens=10, greedy=True, precision="fp32", device="cpu")
    assert [r.completion_ids for r in gpu] == [r.completion_ids for r in cpu]


def test_a_sampled_nul_byte_never_reaches_the_text(frozen_policy):
    nul = frozen_policy.tokenizer.convert_tokens_to_ids("Ā")  # byte 0x00 in the byte-level alphabet
    assert frozen_policy.tokenizer.decode([nul]) == "\x00"

    def force_nul(module, inputs, logits):
        bias = torch.full((logits.shape[-1],), -1e4)
        bias[nul] = 0.0
        return logits + bias

    frozen_policy.model.get_output_embeddings().register_forward_hook(force_nul)
    [r] = generate(frozen_policy, ["hi"], max_new_tokens=3, seed=0, precision="fp32")
    assert r.completion_ids == [nul] * 3
    assert "\x00" not in r.text and r.text == "\ufffd" * 3
