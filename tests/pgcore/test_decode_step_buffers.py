"""The decoding step's preallocated buffers and vocabulary-chunked lm_head
(pgcore.rollout._lm_head_into) and its decode attention (_decode_attention; key-major in bf16)
against the plain computations they replace, on the tiny random Llama."""

import pytest
import torch
from torch.testing import assert_close

from pgcore import rollout
from pgcore.rollout import generate, sampling_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_lm_head_writes_the_modules_logits_into_a_slice_of_the_buffer(dtype, monkeypatch):
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(16, 50, bias=False).to(dtype)
    x = torch.randn(3, 16).to(dtype)
    monkeypatch.setitem(rollout.LM_HEAD_CHUNK, dtype, 7)  # 50 = 7 x 7 + 1: a ragged last chunk
    buffer = torch.full((5, 50), float("nan"))
    out = rollout._lm_head_into(lm_head, x, buffer[:3])
    assert out.data_ptr() == buffer.data_ptr()  # written in place, no fresh tensor
    with torch.no_grad():
        expected = lm_head(x).float()
    # The same dot products; the BLAS may round a narrow chunk's differently (bit for bit
    # on SmolLM2's 49152 x 576 head at batch 64, checked by hand).
    assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert torch.isnan(buffer[3:]).all()  # rows past b untouched


def test_a_hooked_lm_head_runs_its_own_forward_so_the_hook_still_applies():
    lm_head = torch.nn.Linear(16, 50, bias=False)
    lm_head.register_forward_hook(lambda module, args, logits: logits + 100.0)
    x = torch.randn(3, 16)
    out = rollout._lm_head_into(lm_head, x, torch.empty(3, 50))
    assert torch.equal(out, lm_head(x))
    assert out.min() > 50  # the hook's shift is there


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_seed_gives_the_same_tokens_and_logprobs_with_the_buffers_as_with_fresh_tensors(frozen_policy, precision, monkeypatch):
    prompts = ["hi", "a much longer prompt than the first one", "mid length", "", "x" * 30] * 2
    buffered = generate(frozen_policy, prompts, max_new_tokens=12, seed=5, precision=precision, batch_size=4)
    monkeypatch.setattr(rollout, "_lm_head_into", lambda lm_head, x, out: lm_head(x).float())
    fresh = generate(frozen_policy, prompts, max_new_tokens=12, seed=5, precision=precision, batch_size=4)
    assert [r.completion_ids for r in buffered] == [r.completion_ids for r in fresh]
    assert [r.behaviour_logprobs for r in buffered] == [r.behaviour_logprobs for r in fresh]  # exactly


def _query_major_attention(q, k, v, mask, scale):
    """The previous formula: ``q @ k^T`` per group of query heads (the reference)."""
    b, n_heads, _, d = q.shape
    n_kv = k.shape[1]
    qg = q.reshape(b, n_kv, n_heads // n_kv, d)
    scores = torch.matmul(qg, k.contiguous().transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~mask.view(b, 1, 1, -1), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v).reshape(b, 1, n_heads * d)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_decode_attention_on_cache_slices_equals_the_query_major_formula(dtype, tol):
    generator = torch.Generator().manual_seed(0)
    b, n_heads, n_kv, d, width, T = 4, 6, 2, 8, 20, 13
    q = torch.randn(b, n_heads, 1, d, generator=generator).to(dtype)
    cache_k = torch.randn(b, n_kv, width, d, generator=generator).to(dtype)
    cache_v = torch.randn(b, n_kv, width, d, generator=generator).to(dtype)
    mask = torch.rand(b, 1, 1, T, generator=generator) > 0.3
    mask[..., 0] = True  # every row attends somewhere
    k, v = cache_k[:, :, :T], cache_v[:, :, :T]  # column slices, as the decoding step passes them
    found = rollout._decode_attention(q, k, v, mask, 0.35)
    assert found.shape == (b, 1, n_heads * d)
    assert_close(found.float(), _query_major_attention(q, k, v, mask, 0.35).float(), atol=tol, rtol=tol)


def test_fp32_sampling_with_the_new_step_keeps_behaviour_logprobs_exact(drifted_lora_policy):
    from pgcore.logprobs import score_completions

    rollouts = generate(drifted_lora_policy, ["hi", "mid length", "x" * 30] * 2, max_new_tokens=10, seed=2, precision="fp32", batch_size=3)
    assert sampling_model(drifted_lora_policy).lm_head.weight.dtype == torch.float32
    with torch.no_grad():
        lp, _, mask = score_completions(
            drifted_lora_policy.model, [r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
            drifted_lora_policy.tokenizer.pad_token_id, with_entropy=False,
        )
    for r, row, m in zip(rollouts, lp, mask):
        assert_close(torch.tensor(r.behaviour_logprobs), row[m], atol=1e-5, rtol=1e-5)
