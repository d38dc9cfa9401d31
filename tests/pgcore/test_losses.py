import math

import pytest
import torch
from torch.testing import assert_close

from pgcore.logprobs import pack_sequences, sequence_logprobs
from pgcore.losses import kl_k3, pg_loss

# Two sequences of three token slots; the second has one padding slot.
LOGPROBS = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -3.0, 0.0]])
BEHAVIOUR = torch.tensor([[-1.1, -0.9, -1.0], [-0.2, -2.5, 0.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])
ADVANTAGES = torch.tensor([0.8, -1.5])


def _pg_loss_by_loop(logprobs, behaviour, advantages, mask, eps):
    total, count = 0.0, 0
    for b in range(logprobs.shape[0]):
        for t in range(logprobs.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(float(logprobs[b, t] - behaviour[b, t]))
            a = float(advantages[b])
            total += -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
            count += 1
    return torch.tensor(total / count)


def test_pg_loss_equals_a_plain_loop():
    loss, stats = pg_loss(LOGPROBS, BEHAVIOUR, ADVANTAGES, MASK, clip_eps=0.2)
    assert_close(loss, _pg_loss_by_loop(LOGPROBS, BEHAVIOUR, ADVANTAGES, MASK, 0.2))
    ratios = [math.exp(float(LOGPROBS[b, t] - BEHAVIOUR[b, t])) for b in range(2) for t in range(3) if MASK[b, t]]
    assert_close(stats["clipfrac"], torch.tensor(sum(abs(r - 1) > 0.2 for r in ratios) / len(ratios)))
    assert_close(stats["approx_kl"], torch.tensor(sum(r - 1 - math.log(r) for r in ratios) / len(ratios)))


def test_kl_k3_equals_a_plain_loop_and_is_never_negative():
    ref = torch.tensor([[-2.0, -0.5, -0.1], [-0.3, -1.0, -7.0]])
    kl = kl_k3(LOGPROBS, ref, MASK)
    for b in range(2):
        for t in range(3):
            d = float(ref[b, t] - LOGPROBS[b, t])
            expected = math.exp(d) - d - 1 if MASK[b, t] else 0.0
            assert_close(kl[b, t], torch.tensor(expected))
    assert (kl >= 0).all()
    assert kl[1, 2] == 0.0


def test_kl_k3_of_random_logprobs_is_non_negative():
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(64, 32, generator=generator) * 10
    ref = -torch.rand(64, 32, generator=generator) * 10
    assert (kl_k3(logprobs, ref, torch.ones(64, 32, dtype=torch.bool)) >= 0).all()


def test_clipped_tokens_get_no_gradient_and_unclipped_ones_do():
    # ratio e^0.5 with A > 0 and e^-0.5 with A < 0 are clipped; e^-0.5 with A > 0 is not.
    logprobs = torch.tensor([[0.5], [-0.5], [-0.5]], requires_grad=True)
    loss, _ = pg_loss(logprobs, torch.zeros(3, 1), torch.tensor([1.0, -1.0, 1.0]), torch.ones(3, 1, dtype=torch.bool), 0.2)
    loss.backward()
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[1, 0] == 0
    assert logprobs.grad[2, 0] < 0


def test_without_importance_correction_stale_samples_weigh_like_fresh_ones():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss, stats = pg_loss(logprobs, BEHAVIOUR, ADVANTAGES, MASK, 0.2, importance_correction=False)
    loss.backward()
    n_tokens = int(MASK.sum())
    assert_close(loss, -(ADVANTAGES[:, None] * MASK).sum() / n_tokens)
    assert_close(logprobs.grad, -(ADVANTAGES[:, None] * MASK) / n_tokens)
    assert stats["ratio_mean"] != 1.0  # the true ratio is still reported


def test_padding_tokens_contribute_nothing_even_if_they_hold_garbage():
    logprobs = LOGPROBS.clone()
    logprobs[1, 2] = 1e6
    loss, _ = pg_loss(logprobs, BEHAVIOUR, ADVANTAGES, MASK, 0.2)
    assert_close(loss, pg_loss(LOGPROBS, BEHAVIOUR, ADVANTAGES, MASK, 0.2)[0])


def test_mismatched_shapes_and_bad_clip_are_rejected():
    with pytest.raises(ValueError, match="advantages"):
        pg_loss(LOGPROBS, BEHAVIOUR, torch.zeros(3), MASK, 0.2)
    with pytest.raises(ValueError, match="clip_eps"):
        pg_loss(LOGPROBS, BEHAVIOUR, ADVANTAGES, MASK, 1.5)


def test_with_fresh_samples_every_ratio_is_one_and_the_gradient_is_reinforce_with_baseline(lora_policy):
    """On the tiny model: behaviour = current policy, so pg_loss's gradient equals that of
    -(1/n_tokens) * sum_i A_i * sum_t log pi(y_it), REINFORCE with a baseline."""
    model = lora_policy.model
    params = lora_policy.trainable_parameters
    packed = pack_sequences([[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14, 258]], lora_policy.tokenizer.pad_token_id)
    advantages = torch.tensor([0.7, -0.4])
    mask = packed.completion_mask

    logprobs, _ = sequence_logprobs(model, packed.input_ids, packed.attention_mask, mask)
    loss, stats = pg_loss(logprobs, logprobs.detach(), advantages, mask, clip_eps=0.2)
    pg_grads = torch.autograd.grad(loss, params)

    logprobs, _ = sequence_logprobs(model, packed.input_ids, packed.attention_mask, mask)
    reinforce = -(advantages * logprobs.sum(dim=1)).sum() / mask.sum()
    reinforce_grads = torch.autograd.grad(reinforce, params)

    assert_close(stats["ratio_mean"], torch.tensor(1.0))
    assert stats["clipfrac"] == 0.0
    assert any(g.abs().sum() > 0 for g in pg_grads)
    for got, expected in zip(pg_grads, reinforce_grads):
        assert_close(got, expected)


def test_token_logprobs_and_their_gradient_equal_autograds_log_softmax_and_gather():
    from pgcore.logprobs import token_logprobs

    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 11, generator=generator) * 3).requires_grad_(True)
    targets = torch.randint(0, 11, (2, 3), generator=generator)
    weights = torch.randn(2, 3, generator=generator)
    got, log_probs = token_logprobs(logits, targets)
    (got * weights).sum().backward()
    got_grad = logits.grad.clone()
    logits.grad = None
    expected = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    (expected * weights).sum().backward()
    assert_close(got, expected)
    assert_close(log_probs, torch.log_softmax(logits.detach(), -1))
    assert_close(got_grad, logits.grad)


def _expected_gradient(theta, sampler_logp, advantages, **kwargs):
    """Exact expectation over y ~ mu of the gradient of pg_loss for one-token completions.

    Every token of the vocabulary is one sequence; scaling its advantage by ``mu(y) * V``
    turns pg_loss's token mean into the expectation under mu (the loss is positively
    homogeneous in the advantage).
    """
    V = theta.shape[0]
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, dim=0)  # (V,)
    mu = sampler_logp.exp()
    loss, stats = pg_loss(
        logp[:, None],
        sampler_logp[:, None],
        advantages * mu * V,
        torch.ones((V, 1), dtype=torch.bool),
        0.2,
        **kwargs,
    )
    loss.backward()
    return -theta.grad, stats


def test_a_mismatched_sampler_with_tis_gives_the_trainers_expected_gradient():
    generator = torch.Generator().manual_seed(0)
    V = 12
    theta = torch.randn(V, generator=generator)
    advantages = torch.randn(V, generator=generator)
    # The sampler's distribution is off by up to ~0.6 nats per token (far beyond bf16's
    # rounding, and far outside PPO's clip range), but every pi / mu stays below the cap.
    sampler_logp = torch.log_softmax(theta + 1.2 * torch.rand(V, generator=generator) - 0.6, dim=0)
    trainer_logp = torch.log_softmax(theta, dim=0)
    assert float((trainer_logp - sampler_logp).exp().max()) < 2.0

    theta_leaf = theta.clone().requires_grad_(True)
    (torch.softmax(theta_leaf, dim=0) * advantages).sum().backward()  # grad of E_pi[A]
    on_policy = theta_leaf.grad

    corrected, stats = _expected_gradient(
        theta, sampler_logp, advantages, proximal_logprobs=trainer_logp[:, None], tis_cap=2.0
    )
    assert_close(corrected, on_policy, atol=1e-6, rtol=1e-5)
    assert float(stats["tis_truncated"]) == 0.0
    # Without the correction the PPO clip against the sampler's logprobs drops tokens: biased.
    uncorrected, _ = _expected_gradient(theta, sampler_logp, advantages)
    assert (uncorrected - on_policy).abs().max() > 1e-2


def test_tis_weights_are_truncated_at_the_cap_and_carry_no_gradient():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    proximal = LOGPROBS + torch.tensor([[0.0, 2.0, 0.1], [0.0, 0.0, 0.0]])
    loss, stats = pg_loss(logprobs, LOGPROBS, ADVANTAGES, MASK, 0.2, proximal_logprobs=proximal, tis_cap=1.5)
    loss.backward()
    weights = torch.exp(proximal - LOGPROBS).clamp(max=1.5)
    ratio = torch.exp(LOGPROBS - proximal)
    expected = _pg_loss_weighted_by_loop(ratio, weights, ADVANTAGES, MASK, 0.2)
    assert_close(loss.detach(), expected)
    assert_close(stats["tis_truncated"], torch.tensor(1 / 5))
    with pytest.raises(ValueError, match="tis_cap"):
        pg_loss(LOGPROBS, LOGPROBS, ADVANTAGES, MASK, 0.2, proximal_logprobs=proximal)


def _pg_loss_weighted_by_loop(ratio, weights, advantages, mask, eps):
    total, count = 0.0, 0
    for b in range(ratio.shape[0]):
        for t in range(ratio.shape[1]):
            if mask[b, t]:
                r, a = float(ratio[b, t]), float(advantages[b])
                total += -float(weights[b, t]) * min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
                count += 1
    return torch.tensor(total / count)
