"""The decoding step's fused projections (pgcore.rollout.fuse_projections: q/k/v in one matmul
and one rotary pass, gate/up in one matmul) and its cache writes by flat row index, against
the separate modules and the indexed assignment they replace, on the tiny random Llama.
Fused or not, a seed must give the same tokens and bit-identical behaviour logprobs."""

import pytest
import torch

from pgcore import rollout
from pgcore.rollout import generate, sampling_model

PROMPTS = ["hi", "a much longer prompt than the first one", "mid length", "", "x" * 30] * 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("greedy", [True, False])
def test_fused_projections_give_the_same_tokens_and_logprobs_as_the_separate_modules(drifted_lora_policy, precision, greedy, monkeypatch):
    fused = generate(drifted_lora_policy, PROMPTS, max_new_tokens=12, seed=4, greedy=greedy, precision=precision, batch_size=4)
    model = sampling_model(drifted_lora_policy, dtype=rollout.sampling_dtype(precision, torch.device("cpu")))
    assert all(hasattr(layer.self_attn, "_pgcore_qkv") and hasattr(layer.mlp, "_pgcore_gate_up") for layer in model.model.layers)
    rollout._sampling_copies.clear()
    monkeypatch.setattr(rollout, "fuse_projections", lambda model: None)
    separate = generate(drifted_lora_policy, PROMPTS, max_new_tokens=12, seed=4, greedy=greedy, precision=precision, batch_size=4)
    unfused = sampling_model(drifted_lora_policy, dtype=rollout.sampling_dtype(precision, torch.device("cpu")))
    assert not hasattr(unfused.model.layers[0].self_attn, "_pgcore_qkv")
    rollout._sampling_copies.clear()
    assert [r.completion_ids for r in fused] == [r.completion_ids for r in separate]
    assert [r.behaviour_logprobs for r in fused] == [r.behaviour_logprobs for r in separate]  # exactly


def _unfused_copy(policy, dtype, monkeypatch):
    rollout._sampling_copies.clear()
    with monkeypatch.context() as patch:
        patch.setattr(rollout, "fuse_projections", lambda model: None)
        unfused = sampling_model(policy, dtype=dtype)
    assert not hasattr(unfused.model.layers[0].self_attn, "_pgcore_qkv")
    rollout._sampling_copies.clear()
    return unfused


def test_fused_weights_are_views_so_the_copy_takes_no_more_memory_and_its_forward_is_unchanged(drifted_lora_policy, monkeypatch):
    rollout._sampling_copies.clear()
    model = sampling_model(drifted_lora_policy, dtype=torch.bfloat16)
    ids = torch.tensor([[5, 6, 7, 8]])
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    qkv, gate_up = attn._pgcore_qkv, mlp._pgcore_gate_up
    assert attn.q_proj.weight.data_ptr() == qkv.data_ptr()
    assert attn.v_proj.weight.data_ptr() == qkv[-attn.v_proj.out_features :].data_ptr()
    assert mlp.up_proj.weight.data_ptr() == gate_up[mlp.gate_proj.out_features :].data_ptr()
    with torch.no_grad():
        own = model(ids).logits
        unfused = _unfused_copy(drifted_lora_policy, torch.bfloat16, monkeypatch)  # the same weights, never fused
        assert torch.equal(unfused(ids).logits, own)
    rollout._sampling_copies.clear()


def _prefill_logits(model, ids):
    """``_forward_fast``'s last-column logits for ``ids (1, s)`` prefilled into an empty cache."""
    inner = model.model
    n_kv, d = rollout._kv_shape(inner)
    s = ids.shape[1]
    dtype = inner.embed_tokens.weight.dtype
    keys = [torch.zeros(1, n_kv, s, d, dtype=dtype) for _ in inner.layers]
    values = [torch.zeros(1, n_kv, s, d, dtype=dtype) for _ in inner.layers]
    mask = torch.ones(s, s, dtype=torch.bool).tril()[None, None]  # (1, 1, s, s) causal
    with torch.no_grad():
        return rollout._forward_fast(inner, model.lm_head, ids, torch.arange(s)[None], mask, keys, values, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_projection_replaced_after_fusing_is_used_not_the_stale_fused_weight(drifted_lora_policy, dtype, monkeypatch):
    rollout._sampling_copies.clear()
    model = sampling_model(drifted_lora_policy, dtype=dtype)
    unfused = _unfused_copy(drifted_lora_policy, dtype, monkeypatch)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = _prefill_logits(model, ids)
    assert torch.equal(before, _prefill_logits(unfused, ids))
    generator = torch.Generator().manual_seed(3)
    replaced = {}
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        weight = model.get_parameter(name)
        replaced[name] = (torch.randn(weight.shape, generator=generator) * 0.2).to(dtype)
    for copy_ in (model, unfused):  # e.g. a load that swaps tensors in rather than copying into them
        copy_.load_state_dict({k: v.clone() for k, v in replaced.items()}, strict=False, assign=True)
    attn = model.model.layers[0].self_attn
    q_rows = attn.q_proj.out_features
    assert not torch.equal(attn._pgcore_qkv[q_rows : q_rows + attn.k_proj.out_features], attn.k_proj.weight)  # stale
    after = _prefill_logits(model, ids)
    assert torch.equal(after, _prefill_logits(unfused, ids)) and not torch.equal(after, before)
    untouched = model.model.layers[1].self_attn  # still fused, and still run fused
    assert rollout._fused_weight(untouched, "_pgcore_qkv", ("q_proj", "k_proj", "v_proj")) is untouched._pgcore_qkv
    rollout._sampling_copies.clear()


def test_a_policy_sampled_as_it_is_is_never_fused(frozen_policy):
    model = sampling_model(frozen_policy, dtype=torch.float32)  # plain fp32: the policy's own module
    assert model is frozen_policy.model
    assert not hasattr(model.model.layers[0].self_attn, "_pgcore_qkv")


def test_a_hooked_or_biased_projection_is_left_separate(drifted_lora_policy):
    rollout._sampling_copies.clear()
    model = sampling_model(drifted_lora_policy, dtype=torch.float32)
    layer = model.model.layers[1]
    for name in ("_pgcore_qkv", "_pgcore_gate_up"):
        for owner in (layer.self_attn, layer.mlp):
            if hasattr(owner, name):
                delattr(owner, name)
    layer.self_attn.k_proj.register_forward_hook(lambda module, args, out: out)
    layer.mlp.up_proj.bias = torch.nn.Parameter(torch.zeros(layer.mlp.up_proj.out_features))
    rollout.fuse_projections(model)
    assert not hasattr(layer.self_attn, "_pgcore_qkv") and not hasattr(layer.mlp, "_pgcore_gate_up")
    assert hasattr(model.model.layers[0].self_attn, "_pgcore_qkv")
    rollout._sampling_copies.clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decoding_step_writes_the_same_cache_by_flat_index_as_by_indexed_assignment(drifted_lora_policy, dtype):
    """Contiguous caches take the flat ``index_copy_``; column slices of wider caches (not
    contiguous) take the indexed assignment. Same logits, same cache contents."""
    rollout._sampling_copies.clear()
    model = sampling_model(drifted_lora_policy, dtype=dtype)
    inner, lm_head = model.model, model.lm_head
    n_kv, d = rollout._kv_shape(inner)
    B, W, b = 5, 9, 4
    generator = torch.Generator().manual_seed(0)
    base_k = [torch.randn(B, n_kv, W, d, generator=generator).to(dtype) for _ in inner.layers]
    base_v = [torch.randn(B, n_kv, W, d, generator=generator).to(dtype) for _ in inner.layers]
    ids = torch.tensor([[3], [40], [41], [100]])
    cols = torch.tensor([2, 5, 0, 8])
    mask = torch.rand(b, 1, 1, W, generator=generator) > 0.3
    mask[torch.arange(b), 0, 0, cols] = True
    with torch.no_grad():
        flat_k, flat_v = [c.clone() for c in base_k], [c.clone() for c in base_v]
        wide_k = [torch.cat([c, torch.zeros_like(c)], dim=2)[:, :, :W] for c in base_k]  # not contiguous
        wide_v = [torch.cat([c, torch.zeros_like(c)], dim=2)[:, :, :W] for c in base_v]
        positions = cols[:, None] + 1
        found = rollout._forward_fast(inner, lm_head, ids, positions, mask, flat_k, flat_v, cols)
        expected = rollout._forward_fast(inner, lm_head, ids, positions, mask, wide_k, wide_v, cols)
    assert torch.equal(found, expected)
    for a, c in zip(flat_k + flat_v, wide_k + wide_v):
        assert torch.equal(a, c)
    assert not torch.equal(flat_k[0], base_k[0])  # the step wrote its columns
    assert torch.equal(flat_k[0][b:], base_k[0][b:])  # rows past b untouched
    rollout._sampling_copies.clear()
