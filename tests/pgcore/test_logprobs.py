import pytest
import torch
from torch.testing import assert_close

from pgcore.logprobs import pack_sequences, score_completions, sequence_logprobs
from pgcore.losses import kl_k3
from pgcore.policy import reference_model

EOS = 258  # the tiny tokenizer's <|im_end|>, also its pad token

# (prompt, completion) pairs: different lengths, EOS early (then more tokens that a caller
# wrongly kept would show), EOS late, no EOS, and a one-token completion that is just EOS.
PAIRS = [
    ([5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, EOS]),
    ([20, 21], [22, EOS]),
    ([30, 31, 32], [33, 34, 35, 36, 37, 38, 39, 40]),
    ([41], [EOS]),
]


def _logprobs_by_loop(model, prompt, completion):
    """Reference: one unpadded forward per completion token, plain log-softmax."""
    out_logprobs, out_entropy = [], []
    for t, token in enumerate(completion):
        context = torch.tensor([prompt + completion[:t]])
        with torch.no_grad():
            logits = model(input_ids=context).logits[0, -1]
        logp = torch.log_softmax(logits, dim=-1)
        out_logprobs.append(logp[token])
        out_entropy.append(-(logp.exp() * logp).sum())
    return torch.stack(out_logprobs), torch.stack(out_entropy)


def _layout(pairs, side):
    """Pack pairs with padding all on the left or all on the right of each row."""
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), EOS)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    completion = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (p, c) in enumerate(pairs):
        n = len(p) + len(c)
        start = width - n if side == "left" else 0
        ids[i, start : start + n] = torch.tensor(p + c)
        attention[i, start : start + n] = 1
        completion[i, start + len(p) : start + n] = True
    return ids, attention, completion


def _score(model, ids, attention, completion):
    with torch.no_grad():
        return sequence_logprobs(model, ids, attention, completion)


def test_sequence_logprobs_equal_a_plain_loop_of_unpadded_forwards(frozen_policy):
    model = frozen_policy.model
    packed = pack_sequences([p for p, _ in PAIRS], [c for _, c in PAIRS], EOS)
    logprobs, entropy = _score(model, packed.input_ids, packed.attention_mask, packed.completion_mask)
    for i, (prompt, completion) in enumerate(PAIRS):
        expected_logprobs, expected_entropy = _logprobs_by_loop(model, prompt, completion)
        row = packed.completion_mask[i]
        assert_close(logprobs[i, row], expected_logprobs, atol=1e-5, rtol=1e-5)
        assert_close(entropy[i, row], expected_entropy, atol=1e-5, rtol=1e-5)
        assert (logprobs[i, ~row] == 0).all() and (entropy[i, ~row] == 0).all()


@pytest.mark.parametrize("layout", ["packed", "left", "right"])
def test_a_batch_gives_each_sequence_the_logprobs_kl_and_entropy_it_has_alone(drifted_lora_policy, layout):
    policy = drifted_lora_policy
    if layout == "packed":
        packed = pack_sequences([p for p, _ in PAIRS], [c for _, c in PAIRS], EOS)
        batch = (packed.input_ids, packed.attention_mask, packed.completion_mask)
    else:
        batch = _layout(PAIRS, layout)
    logprobs, entropy = _score(policy.model, *batch)
    with reference_model(policy) as ref:
        ref_logprobs, _ = _score(ref, *batch)
    kl = kl_k3(logprobs, ref_logprobs, batch[2])
    assert (entropy >= 0).all() and (kl >= 0).all()
    assert 0.01 < kl.sum() < 10  # the drifted adapter differs from the reference, a little

    for i, pair in enumerate(PAIRS):
        alone = _layout([pair], "right")
        alone_logprobs, alone_entropy = _score(policy.model, *alone)
        with reference_model(policy) as ref:
            alone_ref, _ = _score(ref, *alone)
        alone_kl = kl_k3(alone_logprobs, alone_ref, alone[2])
        row = batch[2][i]
        assert_close(logprobs[i, row], alone_logprobs[0, alone[2][0]], atol=1e-5, rtol=0)
        assert_close(entropy[i, row], alone_entropy[0, alone[2][0]], atol=1e-5, rtol=0)
        assert_close(kl[i].sum(), alone_kl[0].sum(), atol=1e-5, rtol=0)


def test_the_first_eos_is_inside_the_mask_and_the_padding_after_it_is_not():
    # The pad token is the EOS token: masks must come from lengths, never from token values.
    packed = pack_sequences([[1, 2]], [[3, EOS]], pad_id=EOS)
    packed_long = pack_sequences([[1, 2], [4]], [[3, EOS], [5, 6, 7, 8]], pad_id=EOS)
    assert packed.completion_mask.tolist() == [[False, False, True, True]]
    assert packed_long.input_ids[0].tolist() == [1, 2, 3, EOS, EOS, EOS]
    assert packed_long.completion_mask[0].tolist() == [False, False, True, True, False, False]
    assert packed_long.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert packed_long.attention_mask[1].tolist() == [0, 1, 1, 1, 1, 1]


def test_pack_sequences_places_behaviour_logprobs_on_completion_tokens():
    packed = pack_sequences([[1], [2, 3]], [[4, 5], [6]], 0, [[-0.1, -0.2], [-0.3]])
    assert_close(packed.behaviour_logprobs, torch.tensor([[0.0, 0.0, -0.1, -0.2], [0.0, 0.0, -0.3, 0.0]]))
    with pytest.raises(ValueError, match="2 behaviour logprobs for 1 completion tokens"):
        pack_sequences([[1]], [[4]], 0, [[-0.1, -0.2]])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pack_sequences([[]], [[4]], 0)


def test_padding_gets_no_gradient(lora_policy):
    packed = pack_sequences([p for p, _ in PAIRS], [c for _, c in PAIRS], EOS)
    logprobs, _ = sequence_logprobs(lora_policy.model, packed.input_ids, packed.attention_mask, packed.completion_mask)
    logprobs.sum().backward()
    grads = [p.grad for p in lora_policy.trainable_parameters]
    assert all(torch.isfinite(g).all() for g in grads)


def test_scoring_column_zero_is_rejected(frozen_policy):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="column 0"):
        sequence_logprobs(frozen_policy.model, ids, torch.ones_like(ids), torch.tensor([[True, True, False]]))


def test_an_empty_completion_mask_scores_nothing(frozen_policy):
    ids = torch.tensor([[1, 2, 3]])
    logprobs, entropy = sequence_logprobs(frozen_policy.model, ids, torch.ones_like(ids), torch.zeros_like(ids).bool())
    assert (logprobs == 0).all() and (entropy == 0).all()


# Three prompts of different lengths, each followed by several completions: EOS early and
# late, no EOS, a lone EOS, and a one-token completion that is not EOS.
SHARED = [
    ([5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, EOS]),
    ([20, 21], [22, EOS]),
    ([5, 6, 7, 8, 9], [EOS]),
    ([30, 31, 32], [33, 34, 35, 36, 37, 38, 39, 40]),
    ([20, 21], [23, 24, 25, 26, 27, 28, 29, EOS]),
    ([5, 6, 7, 8, 9], [16]),
]


def test_completions_sharing_a_prompt_score_as_each_does_alone(frozen_policy):
    model = frozen_policy.model
    prompts, completions = [p for p, _ in SHARED], [c for _, c in SHARED]
    with torch.no_grad():
        logprobs, entropy, mask = score_completions(model, prompts, completions, EOS)
    assert mask.shape == (len(SHARED), max(len(c) for c in completions))
    for i, (prompt, completion) in enumerate(SHARED):
        expected_logprobs, expected_entropy = _logprobs_by_loop(model, prompt, completion)
        assert mask[i].tolist() == [j < len(completion) for j in range(mask.shape[1])]
        assert_close(logprobs[i, : len(completion)], expected_logprobs, atol=1e-5, rtol=1e-5)
        assert_close(entropy[i, : len(completion)], expected_entropy, atol=1e-5, rtol=1e-5)
        assert (logprobs[i, ~mask[i]] == 0).all() and (entropy[i, ~mask[i]] == 0).all()


def test_sharing_prompts_gives_the_gradients_of_separate_forwards(drifted_lora_policy):
    """The prompt's keys and values get the gradient of every completion that reads them."""
    model = drifted_lora_policy.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    prompts, completions = [p for p, _ in SHARED], [c for _, c in SHARED]
    weights = torch.linspace(-1.0, 1.0, len(SHARED))[:, None]  # signs differ, as advantages do
    grads = {}
    for share in (True, False):
        logprobs, _, _ = score_completions(model, prompts, completions, EOS, share_prompts=share)
        grads[share] = torch.autograd.grad((weights * logprobs).sum(), params)
    assert any(g.abs().max() > 1e-3 for g in grads[False])
    for shared, separate in zip(grads[True], grads[False]):
        assert_close(shared, separate, atol=1e-5, rtol=1e-4)


def test_score_completions_without_repeats_equals_the_packed_forward(frozen_policy):
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    packed = pack_sequences(prompts, completions, EOS)
    expected, expected_entropy = _score(frozen_policy.model, packed.input_ids, packed.attention_mask, packed.completion_mask)
    with torch.no_grad():
        logprobs, entropy, mask = score_completions(frozen_policy.model, prompts, completions, EOS)
    assert_close(logprobs[mask], expected[packed.completion_mask], atol=0, rtol=0)
    assert_close(entropy[mask], expected_entropy[packed.completion_mask], atol=0, rtol=0)


def test_score_completions_rejects_an_empty_prompt_or_mismatched_lists(frozen_policy):
    with pytest.raises(ValueError, match="prompt is empty"):
        score_completions(frozen_policy.model, [[5], []], [[6], [7]], EOS)
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        score_completions(frozen_policy.model, [[5], [5]], [[6]], EOS)
