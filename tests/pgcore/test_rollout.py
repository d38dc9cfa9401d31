import pytest
import torch
from torch.testing import assert_close

from pgcore.logprobs import pack_sequences, sequence_logprobs
from pgcore.rollout import generate, left_pad, render_prompt

EOS = 258
PROMPTS = ["hi", "a much longer prompt than the first one", "mid length"]


@pytest.fixture
def eos_prone_policy(frozen_policy):
    """The tiny policy with +4 on the EOS logit, so some completions end early."""

    def add_eos_bias(module, inputs, logits):
        bias = torch.zeros(logits.shape[-1])
        bias[EOS] = 4.0
        return logits + bias

    frozen_policy.model.get_output_embeddings().register_forward_hook(add_eos_bias)
    return frozen_policy


def _recomputed_logprobs(policy, rollouts):
    packed = pack_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts], EOS)
    with torch.no_grad():
        logprobs, _ = sequence_logprobs(policy.model, packed.input_ids, packed.attention_mask, packed.completion_mask)
    return [row[mask] for row, mask in zip(logprobs, packed.completion_mask)]


def test_behaviour_logprobs_are_those_of_the_distribution_sampled(eos_prone_policy):
    rollouts = generate(eos_prone_policy, PROMPTS * 3, max_new_tokens=12, seed=0, batch_size=4, precision="fp32")
    for rollout, recomputed in zip(rollouts, _recomputed_logprobs(eos_prone_policy, rollouts)):
        assert len(rollout.behaviour_logprobs) == len(rollout.completion_ids)
        assert_close(torch.tensor(rollout.behaviour_logprobs), recomputed, atol=1e-5, rtol=1e-5)


def test_completions_end_at_their_first_eos_or_at_the_token_limit(eos_prone_policy):
    rollouts = generate(eos_prone_policy, PROMPTS * 4, max_new_tokens=12, seed=3, batch_size=5)
    finished = [r for r in rollouts if r.finished]
    unfinished = [r for r in rollouts if not r.finished]
    assert finished and unfinished
    for r in finished:
        assert r.completion_ids[-1] == EOS and EOS not in r.completion_ids[:-1]
        assert "<|im_end|>" not in r.text
    for r in unfinished:
        assert len(r.completion_ids) == 12 and EOS not in r.completion_ids


def test_the_same_seed_gives_the_same_rollouts_and_another_seed_differs(frozen_policy):
    first = generate(frozen_policy, PROMPTS, max_new_tokens=6, seed=7)
    again = generate(frozen_policy, PROMPTS, max_new_tokens=6, seed=7)
    other = generate(frozen_policy, PROMPTS, max_new_tokens=6, seed=8)
    assert [r.completion_ids for r in first] == [r.completion_ids for r in again]
    assert [r.completion_ids for r in first] != [r.completion_ids for r in other]


def test_rollouts_keep_prompt_order_and_the_rendered_prompt(frozen_policy):
    rollouts = generate(frozen_policy, PROMPTS, max_new_tokens=3, seed=1, batch_size=2)
    assert [r.prompt_ids for r in rollouts] == [render_prompt(frozen_policy.tokenizer, p) for p in PROMPTS]


def test_render_prompt_uses_the_chat_template_when_there_is_one(frozen_policy):
    tokenizer = frozen_policy.tokenizer
    ids = render_prompt(tokenizer, "hello")
    assert tokenizer.decode(ids) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    tokenizer.chat_template = None
    assert tokenizer.decode(render_prompt(tokenizer, "hello")) == "hello"


def test_left_pad_aligns_every_prompt_to_the_last_column():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_arguments_are_rejected(frozen_policy):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(frozen_policy, PROMPTS, max_new_tokens=0)
