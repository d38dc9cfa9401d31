"""Drawing a token without a running sum over the whole vocabulary (pgcore.rollout._draw,
_inverse_cdf) against the plain definitions."""

import math

import pytest
import torch

from pgcore.rollout import CDF_BLOCK, _draw, _inverse_cdf


@pytest.mark.parametrize("V", [CDF_BLOCK * 3, CDF_BLOCK * 2 + 7, 5])
def test_the_blocked_search_finds_the_index_a_full_running_sum_finds(V):
    generator = torch.Generator().manual_seed(0)
    p = torch.rand((64, V), generator=generator)
    p[p < 0.3] = 0.0  # zero-probability entries in every block
    u = torch.rand((64, 1), generator=generator) * p.sum(-1, keepdim=True)
    expected = torch.searchsorted(p.cumsum(-1), u, right=True).squeeze(1)
    found = _inverse_cdf(p, u)
    assert torch.equal(found, expected)
    assert bool((p.gather(1, found[:, None]) > 0).all())


def test_a_u_past_a_blocks_own_running_sum_by_rounding_never_lands_on_a_zero_probability_entry():
    # The block's sum and its running sum add the 1e-8s in different orders and round
    # differently, so u falls inside the block by one and past its end by the other.
    p = torch.zeros((1, CDF_BLOCK * 2))
    p[0, 0] = 1.0
    p[0, 1:CDF_BLOCK] = 1e-8  # block 1 has probability 0
    u = torch.tensor([[1.0000027]])
    assert p[:, :CDF_BLOCK].sum() > u > p[:, :CDF_BLOCK].cumsum(-1)[0, -1]
    found = _inverse_cdf(p, u).item()
    assert found < CDF_BLOCK and p[0, found] > 0


def test_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, float("-inf"), 1.0] + [-30.0] * (CDF_BLOCK + 3)])
    n = 40_000
    logp = torch.log_softmax(logits, -1).expand(n, -1).contiguous()
    tokens = _draw(logp, torch.Generator().manual_seed(1), greedy=False)
    probs = torch.softmax(logits[0], -1)
    counts = torch.bincount(tokens, minlength=logits.shape[1]).float()
    assert counts[3] == 0  # a -inf logit is never drawn
    for t in (0, 1, 2, 4):  # each within 4 standard deviations of its expected count
        assert abs(counts[t] - n * probs[t]) < 4 * math.sqrt(n * probs[t] * (1 - probs[t]))


def test_greedy_takes_the_argmax():
    logp = torch.log_softmax(torch.randn((4, 300), generator=torch.Generator().manual_seed(2)) * 5, -1)
    assert torch.equal(_draw(logp, torch.Generator(), greedy=True), logp.argmax(-1))
