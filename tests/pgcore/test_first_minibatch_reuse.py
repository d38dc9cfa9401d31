"""The update's no-grad passes leave out the first minibatch, whose first forward gives its logprobs.

Real pgcore on the tiny random model; ``_score_minibatch`` is wrapped (it still runs) only to
count the completions each no-grad pass scores.
"""

import dataclasses

import pytest
import torch

from pgcore import trainer
from pgcore.config import PGConfig
from pgcore.policy import load_policy
from pgcore.rollout import generate
from pgcore.trainer import TrainBatch, update


def _batch(policy, n):
    rollouts = generate(policy, [f"prompt {i % 3}" for i in range(n)], max_new_tokens=6, seed=0, precision="fp32")
    return TrainBatch(
        prompt_ids=[r.prompt_ids for r in rollouts],
        completion_ids=[r.completion_ids for r in rollouts],
        behaviour_logprobs=[r.behaviour_logprobs for r in rollouts],
        rewards=[float(i % 2) - 0.5 for i in range(n)],
        group_ids=[i % 3 for i in range(n)],
    )


def _update(policy, batch, config, monkeypatch, *, reuse=True):
    """``(completions scored without grad, weights after, on_step infos)`` of one update."""
    scored = []
    real = trainer._score_minibatch

    def counted(model, batch, idx, pad_id, config, *, with_entropy):
        if not torch.is_grad_enabled():
            scored.extend(idx)
        return real(model, batch, idx, pad_id, config, with_entropy=with_entropy)

    monkeypatch.setattr(trainer, "_score_minibatch", counted)
    if not reuse:
        monkeypatch.setattr(trainer, "deterministic_in_training", lambda model: False)
    seen = []
    update(policy, batch, config, on_step=seen.append)
    monkeypatch.undo()
    return scored, [p.detach().clone() for p in policy.trainable_parameters], seen


def test_a_fresh_adapter_scores_all_but_the_first_minibatch_without_grad_and_trains_the_same(tiny_path, monkeypatch):
    config = PGConfig(bf16_autocast=False, minibatch_size=2, epochs=2)
    batch = _batch(load_policy(tiny_path), 6)
    scored, weights, seen = _update(load_policy(tiny_path, config=config, trainable=True), batch, config, monkeypatch)
    scored_all, weights_all, seen_all = _update(
        load_policy(tiny_path, config=config, trainable=True), batch, config, monkeypatch, reuse=False
    )
    assert sorted(scored_all) == list(range(6))  # one reference pass over every completion (it is the proximal one too)
    assert len(scored) == 4 and set(scored) < set(range(6))  # the first minibatch is left to its first forward
    assert seen[0]["objective/kl"] == 0.0 and seen[0]["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    for after, after_all in zip(weights, weights_all):
        torch.testing.assert_close(after, after_all, atol=1e-6, rtol=1e-5)
    assert [s["objective/kl"] for s in seen] == pytest.approx([s["objective/kl"] for s in seen_all], abs=1e-6)


def test_a_trained_adapter_leaves_the_first_minibatch_out_of_its_proximal_pass_only(drifted_lora_policy, monkeypatch):
    config = PGConfig(bf16_autocast=False, minibatch_size=2, epochs=1)
    batch = _batch(drifted_lora_policy, 6)
    scored, _, seen = _update(drifted_lora_policy, batch, config, monkeypatch)
    assert len(scored) == 6 + 4  # the whole reference pass, the proximal pass without the first minibatch
    assert seen[0]["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # pi / pi_old before any step


def test_with_dropout_every_completion_is_scored_without_grad(tiny_path, monkeypatch):
    config = PGConfig(bf16_autocast=False, minibatch_size=2, epochs=1, lora_dropout=0.1)
    policy = load_policy(tiny_path, config=config, trainable=True)
    assert not trainer.deterministic_in_training(policy.model)
    without = load_policy(tiny_path, config=dataclasses.replace(config, lora_dropout=0.0), trainable=True)
    assert trainer.deterministic_in_training(without.model)
    scored, _, _ = _update(policy, _batch(policy, 4), config, monkeypatch)
    assert sorted(scored) == list(range(4))  # a training-mode forward is not the policy's logprobs
