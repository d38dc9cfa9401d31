"""Importance-weighted clipped policy-gradient loss and the k3 KL penalty.

The ratio ``rho_t = exp(log pi_theta(y_t) - log mu(y_t))`` corrects for completions sampled
by an older version (the behaviour policy ``mu``); it is clipped as in PPO (Schulman et al.
2017, "Proximal Policy Optimization Algorithms"). With fresh samples ``rho = 1`` and the
gradient is REINFORCE with a baseline (Williams 1992, "Simple statistical gradient-following
algorithms for connectionist reinforcement learning").

When the sampler's logprobs are not the trainer's (a bf16 or merged-LoRA sampler, other
kernels), the ratio is taken against the trainer's own logprobs at the start of the update
(the proximal policy) and each token is weighted by the truncated importance weight
``min(pi_proximal / mu, C)``: truncated importance sampling as in Yao et al. 2025 ("Your
efficient RL framework secretly brings you off-policy RL training"), the decoupled PPO
objective of Hilton et al. 2021 ("Batch size-invariance for policy optimization").
"""

from __future__ import annotations

import torch

# exp() of a log-ratio beyond this is treated as this: ratios of e^20 are already far
# outside any clip range, and the cap keeps inf * 0 = NaN out of the loss.
MAX_LOG_RATIO = 20.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (same shape); 0 when the mask is empty, never NaN."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref), Schulman 2020 ("Approximating KL divergence").

    With ``d = ref_logprobs - logprobs`` on tokens sampled from pi,
    ``k3 = exp(d) - d - 1``: unbiased for the KL, and >= 0 for every token (``e^x >= 1 + x``).

    Args:
        logprobs: ``(B, T)`` log pi of the tokens, nats.
        ref_logprobs: ``(B, T)`` log pi_ref of the same tokens, nats.
        mask: ``(B, T)`` bool, True on completion tokens.

    Returns:
        ``(B, T)`` per-token KL estimate in nats, exactly 0 where ``mask`` is False.
    """
    d = (ref_logprobs - logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    k3 = torch.expm1(d) - d
    return torch.where(mask.bool(), k3.clamp(min=0.0), 0.0)


def pg_loss(
    logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    importance_correction: bool = True,
    proximal_logprobs: torch.Tensor | None = None,
    tis_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped, importance-weighted policy-gradient loss, averaged over completion tokens.

    Per token ``l_t = -min(rho_t * A, clip(rho_t, 1 - eps, 1 + eps) * A)`` with
    ``rho_t = exp(logprobs - behaviour_logprobs)`` (log-ratio capped at +-20) and ``A`` the
    sequence's advantage; loss ``= sum(l_t * mask) / sum(mask)``. With fresh samples
    (``rho = 1``) its gradient is ``-(1 / n_tokens) * sum_i A_i * grad sum_t log pi(y_it)``,
    REINFORCE with a baseline up to the constant ``1 / n_tokens``.

    Args:
        logprobs: ``(B, T)`` log pi_theta of the completion tokens, differentiable, nats.
        behaviour_logprobs: ``(B, T)`` log mu of the same tokens, stored at sampling time.
        advantages: ``(B,)`` one advantage per sequence, reward units.
        mask: ``(B, T)`` bool, True on completion tokens.
        clip_eps: PPO clip epsilon in (0, 1).
        importance_correction: False treats every ratio as 1 (plain on-policy REINFORCE
            even for stale samples; an ablation). Stats still report the true ratio.
        proximal_logprobs: ``(B, T)`` the trainer's logprobs of the same tokens at the
            start of the update (no grad), or None. When given, ``rho_t`` is taken against
            them instead of ``behaviour_logprobs`` and each token's loss is multiplied by
            the detached weight ``w_t = min(exp(proximal - behaviour), tis_cap)``: with a
            sampler whose logprobs differ from the trainer's the expected gradient is then
            the trainer's on-policy gradient (exactly, while no weight reaches the cap).
        tis_cap: ``C`` > 0 of the truncation; required with ``proximal_logprobs``.

    Returns:
        ``(loss, stats)``: scalar loss; stats (detached scalars) ``approx_kl`` (k3 estimate
        of KL(mu || pi_theta) on the sampled tokens, mu the proximal policy when given),
        ``clipfrac`` (fraction of tokens whose ratio is outside the clip range),
        ``ratio_mean``, and with ``proximal_logprobs`` ``tis_weight_mean`` (mean ``w_t``)
        and ``tis_truncated`` (fraction of tokens whose weight hit the cap).

    Raises:
        ValueError: on mismatched shapes, ``clip_eps`` outside (0, 1), or
            ``proximal_logprobs`` without a positive ``tis_cap``.
    """
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if not (logprobs.shape == behaviour_logprobs.shape == mask.shape) or advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"expected logprobs, behaviour_logprobs, mask (B, T) and advantages (B,), got {tuple(logprobs.shape)}, "
            f"{tuple(behaviour_logprobs.shape)}, {tuple(mask.shape)}, {tuple(advantages.shape)}"
        )
    tis_weight = None
    if proximal_logprobs is not None:
        if proximal_logprobs.shape != logprobs.shape:
            raise ValueError(f"proximal_logprobs must be {tuple(logprobs.shape)}, got {tuple(proximal_logprobs.shape)}")
        if tis_cap is None or not tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0 with proximal_logprobs, got {tis_cap}")
        proximal = proximal_logprobs.detach()
        tis_log = (proximal - behaviour_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        tis_weight = torch.exp(tis_log).clamp(max=tis_cap)  # (B, T), no gradient
        behaviour_logprobs = proximal
    mask = mask.bool()
    log_ratio = (logprobs - behaviour_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B, T)
    ratio = torch.exp(log_ratio)
    if importance_correction:
        weight = ratio
    else:
        weight = torch.exp(logprobs - logprobs.detach())  # value 1, gradient of log pi
    adv = advantages.to(logprobs.dtype).unsqueeze(1)  # (B, 1)
    unclipped = weight * adv
    clipped = torch.clamp(weight, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)  # (B, T)
    if tis_weight is not None and importance_correction:
        per_token = per_token * tis_weight
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        lr = log_ratio.detach()
        stats = {
            "approx_kl": masked_mean(torch.expm1(lr) - lr, mask),
            "clipfrac": masked_mean(((ratio.detach() - 1.0).abs() > clip_eps).float(), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
        }
        if tis_weight is not None:
            stats["tis_weight_mean"] = masked_mean(tis_weight, mask)
            stats["tis_truncated"] = masked_mean((tis_weight >= tis_cap).float(), mask)
    return loss, stats
