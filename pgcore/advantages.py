"""Baselines and advantages for REINFORCE-style updates.

The leave-one-out (RLOO) baseline of Kool et al. 2019 ("Buy 4 REINFORCE samples, get a
baseline for free!") and Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs") subtracts from each completion's
reward the mean reward of the other completions of the same prompt: unbiased, and free.
"""

from __future__ import annotations

import torch

_MIN_STD = 1e-8


def _check_rewards(rewards: torch.Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")


def leave_one_out(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages within groups (a group = completions of one prompt).

    For a completion ``i`` in a group ``g`` of size ``n_g >= 2``:
    ``A_i = r_i - (sum_{j in g} r_j - r_i) / (n_g - 1)``. With two samples this is
    ``+-(r_a - r_b)``: the pairwise signal. A completion alone in its group falls back to the
    batch: its baseline is the mean reward of all other completions in the batch (the
    same leave-one-out idea over the batch), and a batch of one has baseline 0, the
    neutral score, so its advantage is its reward.

    Args:
        rewards: ``(N,)`` float rewards.
        group_ids: ``(N,)`` integer group labels (any values).

    Returns:
        ``advantages (N,)``, same dtype as ``rewards``; never NaN for finite input.

    Raises:
        ValueError: shapes differ or are not 1-D.
    """
    _check_rewards(rewards)
    group_ids = torch.as_tensor(group_ids)
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids shape {tuple(group_ids.shape)} differs from rewards {tuple(rewards.shape)}")
    N = rewards.shape[0]
    if N == 0:
        return rewards.clone()
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (N,) dense group index
    G = int(inverse.max()) + 1
    group_sum = torch.zeros(G, dtype=rewards.dtype).index_add_(0, inverse, rewards)  # (G,)
    group_n = torch.zeros(G, dtype=rewards.dtype).index_add_(0, inverse, torch.ones_like(rewards))
    n = group_n[inverse]  # (N,)
    in_group = (group_sum[inverse] - rewards) / (n - 1).clamp(min=1)
    in_batch = (rewards.sum() - rewards) / max(N - 1, 1)  # 0 when N == 1
    baseline = torch.where(n >= 2, in_group, in_batch)
    return rewards - baseline


def batch_mean_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """Advantages against the batch mean: ``rewards - rewards.mean()``; ``(N,) -> (N,)``.

    A batch of one gets advantage 0 (it is its own mean); an empty batch stays empty.
    """
    _check_rewards(rewards)
    if rewards.numel() == 0:
        return rewards.clone()
    return rewards - rewards.mean()


class EMABaseline:
    """Running (exponential moving average) mean reward across updates.

    ``advantages = baseline(rewards)`` subtracts the average of earlier batches, then folds
    this batch's mean in: ``b <- decay * b + (1 - decay) * mean(rewards)``. Before the first
    batch the baseline is 0. Useful when each update sees too few ratings for a batch mean.
    """

    def __init__(self, decay: float = 0.9, value: float = 0.0) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.value = float(value)

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        _check_rewards(rewards)
        advantages = rewards - self.value
        if rewards.numel():
            self.value = self.decay * self.value + (1 - self.decay) * float(rewards.mean())
        return advantages


def whiten(advantages: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance advantages: ``(A - mean) / std``; ``(N,) -> (N,)``.

    Returns the input unchanged (a copy) when ``N < 2`` or the standard deviation is below
    1e-8, so a batch of one or all-equal advantages never produce NaN.
    """
    _check_rewards(advantages)
    if advantages.numel() < 2:
        return advantages.clone()
    std = advantages.std(unbiased=False)
    if float(std) < _MIN_STD:
        return advantages.clone()
    return (advantages - advantages.mean()) / std
