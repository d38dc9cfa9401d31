"""A learned value baseline (the critic) and generalised advantage estimation.

Actor-critic methods subtract a learned value ``V(s)`` from the return to cut the variance
of the policy gradient without biasing it (Sutton et al. 2000; Schulman et al. 2016,
"High-Dimensional Continuous Control Using Generalized Advantage Estimation", GAE).
:func:`gae_advantages` is GAE as in that paper's eq. 16:
``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and ``A_t = sum_l (gamma lambda)^l delta_{t+l}``.

In Rewardloop a rating arrives once, for the whole completion: the reward sits on the last
token and the state at token 0 is the prompt. pgcore's critic is *per sequence*: it values
the prompt, ``V(x)``, and every token of the completion gets the advantage
``A = R - V(x)``. That is GAE with ``gamma = lambda = 1`` evaluated at the first completion
token (the sum of deltas telescopes to ``R - V(s_0)``; ``test_critic.py`` checks it), the
unbiased Monte-Carlo advantage. Per-token values (``lambda < 1``) trade bias for variance;
they need a value for every prefix and are left for later: with one reward per completion
and few ratings per update, the prompt's value is the part a critic can learn.

The value head is linear over frozen features: ``V(x) = [phi(x), 1] . w`` with ``phi(x)``
the reference policy's last hidden state of the prompt, mean-pooled over its tokens and
scaled to unit root-mean-square (:func:`prompt_features`). Features of the *reference*
(the base model) do not move as the policy trains, so the critic can keep what it learned
from earlier updates. ``w`` is the ridge-regression (least-squares) fit of the rewards seen
so far, with older updates discounted by ``decay`` because the policy, and so the value of
a prompt, moves: ``A <- decay * A + Phi^T Phi``, ``b <- decay * b + Phi^T r``,
``w = (A + ridge * I)^-1 b`` (:meth:`Critic.fit`). A batch's advantages use the critic
as it was *before* that batch was folded in, so a completion's baseline never depends on
its own reward (the baseline stays unbiased). With no data yet ``w = 0`` (``V = 0``, the
neutral rating); the trainer then uses the leave-one-out baseline for that first update.

The critic's state is saved next to the policy's weights (``critic.safetensors``, inside
the checksum) by :func:`pgcore.policy.save_policy_atomic` and loaded back by
:func:`pgcore.policy.load_policy`, so each version carries the critic trained with it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pgcore.logprobs import position_ids_from_mask

CRITIC_FILE = "critic.safetensors"


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates (Schulman et al. 2016, eq. 16) for terminal rewards.

    Each completion ``i`` earns ``rewards[i]`` on its last masked token and nothing
    before; the value after the last token is 0 (the episode ends). With
    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``;
    the returns (the critic's regression targets) are ``A_t + V_t``.

    Args:
        rewards: ``(B,)`` one scalar reward per completion.
        values: ``(B, T)`` the critic's ``V(s_t)`` before token ``t`` (``s_0`` = the prompt).
        mask: ``(B, T)`` bool, True on completion tokens; a row's True entries must be a
            prefix of the row (right padding).
        gamma: discount in [0, 1].
        lam: GAE's lambda in [0, 1].

    Returns:
        ``(advantages, returns)``, each ``(B, T)``, 0 where ``mask`` is False. With
        ``gamma = lam = 1``: ``A_t = R - V_t``.

    Raises:
        ValueError: on mismatched shapes or gamma / lam outside [0, 1].
    """
    if values.shape != mask.shape or rewards.shape != values.shape[:1]:
        raise ValueError(
            f"expected rewards (B,), values and mask (B, T); got {tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
    mask = mask.bool()
    B, T = values.shape
    values = torch.where(mask, values, 0.0)
    lengths = mask.sum(dim=1)  # (B,)
    token_rewards = torch.zeros_like(values)  # (B, T): the reward on each row's last token
    rows = torch.nonzero(lengths > 0).flatten()
    token_rewards[rows, lengths[rows] - 1] = rewards[rows].to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(B, dtype=values.dtype)
    next_advantage = torch.zeros(B, dtype=values.dtype)
    for t in reversed(range(T)):
        live = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(live, a_t, 0.0)
        next_value = torch.where(live, values[:, t], 0.0)
        next_advantage = torch.where(live, a_t, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


class Critic:
    """Linear value head ``V(x) = [phi(x), 1] . w``, fitted by discounted ridge regression.

    Attributes:
        gram: ``(D + 1, D + 1)`` float64, discounted ``sum [phi, 1]^T [phi, 1]``.
        moment: ``(D + 1,)`` float64, discounted ``sum [phi, 1] * reward``.
        weight: ``(D + 1,)`` float64, the current fit (zeros before any data).
        n_seen: discounted count of rewards fitted (a float; 0 before any data).
    """

    def __init__(self, feature_dim: int) -> None:
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        D = feature_dim + 1
        self.gram = torch.zeros(D, D, dtype=torch.float64)
        self.moment = torch.zeros(D, dtype=torch.float64)
        self.weight = torch.zeros(D, dtype=torch.float64)
        self.n_seen = 0.0

    @property
    def feature_dim(self) -> int:
        return self.weight.numel() - 1

    def _augment(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (N, {self.feature_dim}), got {tuple(features.shape)}")
        ones = torch.ones(features.shape[0], 1, dtype=torch.float64)
        return torch.cat([features.to(torch.float64), ones], dim=1)  # (N, D + 1)

    def values(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` features -> ``(N,)`` float32 values, reward units."""
        return (self._augment(features) @ self.weight).to(torch.float32)

    def fit(self, features: torch.Tensor, rewards: torch.Tensor, *, ridge: float, decay: float) -> None:
        """Fold one batch in and refit: ``gram <- decay*gram + X^T X``, ``moment <- decay*moment + X^T r``,
        ``weight = (gram + ridge*I)^-1 moment`` (``X = [features, 1]``, the bias penalised too).

        Args:
            features: ``(N, D)``; rewards: ``(N,)``.
            ridge: > 0, in units of (unit-RMS) samples; decay: in (0, 1], 1 keeps every batch.

        Raises:
            ValueError: on shapes, ``ridge <= 0`` or ``decay`` outside (0, 1].
        """
        if not ridge > 0 or not 0 < decay <= 1:
            raise ValueError(f"ridge must be > 0 and decay in (0, 1], got {ridge}, {decay}")
        X = self._augment(features)
        r = rewards.to(torch.float64).reshape(-1)
        if r.shape[0] != X.shape[0]:
            raise ValueError(f"{X.shape[0]} feature rows for {r.shape[0]} rewards")
        self.gram = decay * self.gram + X.T @ X
        self.moment = decay * self.moment + X.T @ r
        self.n_seen = decay * self.n_seen + X.shape[0]
        eye = torch.eye(self.gram.shape[0], dtype=torch.float64)
        self.weight = torch.linalg.solve(self.gram + ridge * eye, self.moment)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "gram": self.gram,
            "moment": self.moment,
            "weight": self.weight,
            "n_seen": torch.tensor([self.n_seen], dtype=torch.float64),
        }

    def save(self, path: str | Path) -> None:
        """Write the state as safetensors to ``path`` (inside an atomic folder, as the policy's weights)."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Critic":
        """Read a critic written by :meth:`save`.

        Raises:
            ValueError: the file lacks a tensor or its shapes disagree (corrupt or foreign file).
        """
        from safetensors.torch import load_file

        state = load_file(str(path))
        missing = {"gram", "moment", "weight", "n_seen"} - set(state)
        if missing:
            raise ValueError(f"{path} is not a pgcore critic: missing {sorted(missing)}")
        D = state["weight"].numel()
        if D < 2 or state["gram"].shape != (D, D) or state["moment"].shape != (D,):
            raise ValueError(f"{path}: critic tensors have inconsistent shapes")
        critic = cls(D - 1)
        critic.gram = state["gram"].to(torch.float64)
        critic.moment = state["moment"].to(torch.float64)
        critic.weight = state["weight"].to(torch.float64)
        critic.n_seen = float(state["n_seen"].flatten()[0])
        return critic


@torch.no_grad()
def prompt_features(model, prompt_ids: list[list[int]], pad_id: int, chunk_size: int = 8) -> torch.Tensor:
    """The critic's input: each prompt's last hidden state, mean-pooled and scaled to unit RMS.

    Args:
        model: a causal LM (the reference policy: pass the module
            :func:`pgcore.policy.reference_model` yields); run in eval mode, fp32, no grad.
        prompt_ids: ``N`` non-empty token-id lists.
        pad_id: id used for left padding (masked out).
        chunk_size: prompts per forward pass.

    Returns:
        ``(N, H)`` float32 on the model's device, each row with root-mean-square 1 (H = the
        model's hidden size).
    """
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    try:
        for start in range(0, len(prompt_ids), chunk_size):
            chunk = prompt_ids[start : start + chunk_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):
                input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                attention_mask[i, width - len(p) :] = 1
            device = next(model.parameters()).device  # a no-op on the CPU
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                output_hidden_states=True,
                use_cache=False,
            )
            hidden = out.hidden_states[-1].float()  # (b, T, H)
            m = attention_mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (b, H)
            rms = pooled.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-6)
            rows.append(pooled / rms)
    finally:
        model.train(was_training)
    return torch.cat(rows, dim=0)
