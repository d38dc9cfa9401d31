"""bf16 sampling through pre-packed oneDNN weights (pgcore.rollout._linear) against the plain
matmul it replaces: the same values bit for bit, repacked when the weight changes, and the same
tokens and behaviour logprobs for a seed on the tiny random Llama."""

import pytest
import torch

from pgcore import rollout
from pgcore.rollout import generate, sampling_model

packs = pytest.mark.skipif(
    not rollout._packs(torch.empty(1, dtype=torch.bfloat16)), reason="no oneDNN bf16 on this CPU build"
)


@packs
@pytest.mark.parametrize("shape", [(3, 16), (4, 1, 16), (2, 7, 16)])
def test_the_packed_matmul_equals_the_plain_one_bit_for_bit(shape):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 16, generator=generator).bfloat16()
    x = torch.randn(*shape, generator=generator).bfloat16()
    owner = torch.nn.Module()
    found = rollout._linear(owner, "w", x, weight)
    assert found.shape == (*shape[:-1], 40)
    assert torch.equal(found, torch.nn.functional.linear(x, weight))
    assert "w" in owner._pgcore_packed  # packed once, kept on the owner


@packs
def test_a_weight_changed_in_place_is_packed_again():
    weight = torch.randn(40, 16).bfloat16()
    x = torch.randn(3, 16).bfloat16()
    owner = torch.nn.Module()
    before = rollout._linear(owner, "w", x, weight)
    weight.mul_(2)  # an optimiser step or a load: the version counter moves
    after = rollout._linear(owner, "w", x, weight)
    assert torch.equal(after, torch.nn.functional.linear(x, weight))
    assert not torch.equal(after, before)


@packs
def test_the_packed_lm_head_keeps_no_staging_buffer_it_never_uses():
    # The packed path writes _linear's answer into ``out``: a bf16 b x V staging buffer kept on
    # the module as well was memory held for nothing.
    lm_head = torch.nn.Linear(16, 50, bias=False).bfloat16()
    x = torch.randn(3, 16).bfloat16()
    out = rollout._lm_head_into(lm_head, x, torch.empty(3, 50))
    with torch.no_grad():
        assert torch.equal(out, lm_head(x).float())
    assert "lm_head" in lm_head._pgcore_packed and not hasattr(lm_head, "_pgcore_staging")


def test_fp32_weights_are_never_packed():
    weight, x, owner = torch.randn(40, 16), torch.randn(3, 16), torch.nn.Module()
    assert torch.equal(rollout._linear(owner, "w", x, weight), torch.nn.functional.linear(x, weight))
    assert not hasattr(owner, "_pgcore_packed")


@packs
@pytest.mark.parametrize("greedy", [False, True])
def test_bf16_sampling_gives_the_same_tokens_and_logprobs_with_packed_weights(frozen_policy, greedy, monkeypatch):
    prompts = ["hi", "a much longer prompt than the first one", "mid length", "", "x" * 30] * 2
    packed = generate(frozen_policy, prompts, max_new_tokens=12, seed=5, precision="bf16", batch_size=4, greedy=greedy)
    copy_ = sampling_model(frozen_policy, dtype=torch.bfloat16)
    assert copy_.model.layers[0].mlp._pgcore_packed  # the packed path ran
    monkeypatch.setattr(rollout, "_packs", lambda weight: False)
    plain = generate(frozen_policy, prompts, max_new_tokens=12, seed=5, precision="bf16", batch_size=4, greedy=greedy)
    assert [r.completion_ids for r in packed] == [r.completion_ids for r in plain]
    assert [r.behaviour_logprobs for r in packed] == [r.behaviour_logprobs for r in plain]  # exactly
