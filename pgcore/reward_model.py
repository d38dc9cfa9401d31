"""A reward model learned from human judgments: frozen-backbone features, an ensemble of small heads.

Built for a small CPU. The policy's backbone (the base model, frozen) reads each completion
once and its hidden states are pooled into a feature vector (:func:`completion_features`);
the caller caches these per completion. An ensemble of ``K`` small heads (linear or a
one-hidden-layer MLP) is then trained on those features, each member on its own bootstrap
resample of the judgments (Efron 1979; deep-ensemble uncertainty as in Lakshminarayanan
et al. 2017), so a refit on a thousand ratings takes seconds. The members' mean is the
predicted reward and their standard deviation the model's uncertainty.

One loss serves every judgment kind (:func:`judgment_loss`):

- Likert and thumbs ratings are regression targets: the per-annotator normalised scores of
  ``pgcore.rewards`` (reward units, about [-1, 1]); squared error.
- Pairwise choices are Bradley–Terry: ``P(a preferred to b) = sigmoid(bt_scale * (r_a - r_b))``
  (Bradley & Terry 1952), fitted by binary cross-entropy to a target of 1 (a won), 0 (b
  won) or 0.5 (a tie), as in Christiano et al. 2017 ("Deep reinforcement learning from
  human preferences") and Ziegler et al. 2019 ("Fine-tuning language models from human
  preferences"), whose reward models are trained on comparisons this way.

The learned reward is in the same units as ``pgcore.rewards``'s normalised scores, so a
pairwise win (+1 vs -1 there) corresponds to ``r_a - r_b = 2``.

Artefacts are written with :func:`pgcore.policy.atomic_directory` (temporary folder, fsync,
rename, SHA-256 record) and verified on load.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pgcore.config import HEADS, POOLINGS, RewardModelConfig  # noqa: F401 - torch-free, re-exported
from pgcore.policy import CHECKSUM_FILE, ChecksumError, atomic_directory, verify_weights, weights_sha256

WEIGHTS_FILE = "reward_model.safetensors"
META_FILE = "reward_model.json"
# Ridge penalties tried by cross-validation when ``ridge_alpha`` is 0 (inputs are standardised or
# PCA-scaled so the first component has unit variance).
RIDGE_ALPHAS = tuple(10.0**k for k in range(-2, 6))
RIDGE_FOLDS = 5
_FORMAT = 1


@dataclass
class Judgments:
    """Human judgments over ``N`` feature rows, in tensors.

    Attributes:
        rating_index: ``(R,)`` long, row of each rated completion (Likert/thumbs), in ``[0, N)``.
        rating_target: ``(R,)`` float, its normalised score (reward units).
        pair_a, pair_b: ``(P,)`` long, rows of the two completions of each comparison.
        pair_target: ``(P,)`` float in [0, 1], probability that ``a`` is preferred: 1 a won,
            0 b won, 0.5 a tie.
        rating_weight, pair_weight: ``(R,)`` / ``(P,)`` float, finite and >= 0, how much each
            judgment counts in the loss (:func:`judgment_loss`; a weight of 2 counts as the
            judgment twice); ones when not given.
    """

    rating_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    rating_target: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    pair_a: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    pair_b: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    pair_target: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    rating_weight: torch.Tensor | None = None
    pair_weight: torch.Tensor | None = None

    def __post_init__(self):
        self.rating_index = torch.as_tensor(self.rating_index, dtype=torch.long).reshape(-1)
        self.rating_target = torch.as_tensor(self.rating_target, dtype=torch.float32).reshape(-1)
        self.pair_a = torch.as_tensor(self.pair_a, dtype=torch.long).reshape(-1)
        self.pair_b = torch.as_tensor(self.pair_b, dtype=torch.long).reshape(-1)
        self.pair_target = torch.as_tensor(self.pair_target, dtype=torch.float32).reshape(-1)
        if self.rating_index.shape != self.rating_target.shape:
            shapes = f"{tuple(self.rating_index.shape)} and {tuple(self.rating_target.shape)}"
            raise ValueError(f"rating_index and rating_target differ in shape: {shapes}")
        if not (self.pair_a.shape == self.pair_b.shape == self.pair_target.shape):
            raise ValueError("pair_a, pair_b and pair_target must have one entry per comparison")
        if not torch.isfinite(self.rating_target).all() or not torch.isfinite(self.pair_target).all():
            raise ValueError("judgment targets must be finite")
        if ((self.pair_target < 0) | (self.pair_target > 1)).any():
            raise ValueError("pair_target must lie in [0, 1]")
        for name, like in (("rating_weight", self.rating_index), ("pair_weight", self.pair_a)):
            weight = getattr(self, name)
            weight = torch.ones(like.shape) if weight is None else torch.as_tensor(weight, dtype=torch.float32).reshape(-1)
            if weight.shape != like.shape:
                raise ValueError(f"{name} needs one entry per judgment: {tuple(weight.shape)} for {tuple(like.shape)}")
            if not torch.isfinite(weight).all() or (weight < 0).any():
                raise ValueError(f"{name} must be finite and >= 0")
            setattr(self, name, weight)

    @property
    def n_ratings(self) -> int:
        return int(self.rating_index.numel())

    @property
    def n_pairs(self) -> int:
        return int(self.pair_a.numel())

    def __len__(self) -> int:
        return self.n_ratings + self.n_pairs

    def check_rows(self, n_rows: int) -> None:
        """Raises ValueError when an index falls outside ``[0, n_rows)``."""
        for name in ("rating_index", "pair_a", "pair_b"):
            t = getattr(self, name)
            if t.numel() and (t.min() < 0 or t.max() >= n_rows):
                raise ValueError(f"{name} holds an index outside [0, {n_rows})")


def pair_target_from_scores(score_a: float, score_b: float) -> float:
    """Bradley–Terry target from the two scores a pairwise choice gives (``pgcore.rewards``).

    ``(score_a - score_b + 2) / 4`` clipped to [0, 1]: a won (+1, -1) -> 1, b won -> 0, a tie
    or "both bad" (equal scores) -> 0.5.
    """
    return min(1.0, max(0.0, (float(score_a) - float(score_b) + 2.0) / 4.0))


# ---------------------------------------------------------------- the loss


def judgment_loss(
    rating_pred: torch.Tensor,
    rating_target: torch.Tensor,
    pair_diff: torch.Tensor,
    pair_target: torch.Tensor,
    *,
    bt_scale: float = 1.0,
    pairwise_weight: float = 1.0,
    rating_weight: torch.Tensor | None = None,
    pair_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """One loss over ratings (squared error) and comparisons (Bradley–Terry cross-entropy).

    ``loss = (sum_i w_i (pred_i - y_i)^2 + lambda * sum_j v_j bce(beta * d_j, t_j)) / (sum_i w_i + lambda * sum_j v_j)``
    with ``bce(x, t) = softplus(x) - t x`` (the binary cross-entropy of ``sigmoid(x)``
    against ``t``; at ``t = 0.5`` its minimum is ``log 2``, reached at ``x = 0``).

    Every tensor may carry leading ensemble dimensions (e.g. ``(K, R)``); the sums run over
    the last dimension, so the result has the leading shape (``(K,)``) or is a scalar.

    Args:
        rating_pred, rating_target: ``(..., R)`` predicted and target rewards.
        pair_diff: ``(..., P)`` ``r_a - r_b`` of each comparison; ``pair_target`` ``(..., P)``
            in [0, 1].
        bt_scale: ``beta`` > 0.
        pairwise_weight: ``lambda`` >= 0.
        rating_weight, pair_weight: ``(..., R)`` / ``(..., P)`` non-negative weights
            (bootstrap counts); ones when ``None``.

    Returns:
        The weighted mean loss; 0 (not NaN) when every weight is 0 or there is no judgment.
    """
    if rating_weight is None:
        rating_weight = torch.ones_like(rating_pred)
    if pair_weight is None:
        pair_weight = torch.ones_like(pair_diff)
    squared = (rating_pred - rating_target) ** 2
    logits = bt_scale * pair_diff
    bce = F.softplus(logits) - pair_target * logits
    total = (rating_weight * squared).sum(-1) + pairwise_weight * (pair_weight * bce).sum(-1)
    weight = rating_weight.sum(-1) + pairwise_weight * pair_weight.sum(-1)
    return total / weight.clamp(min=1e-12)


# ---------------------------------------------------------------- features


@torch.no_grad()
def completion_features(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    config: RewardModelConfig,
    *,
    pad_id: int = 0,
    batch_size: int = 8,
) -> torch.Tensor:
    """Pooled hidden states of a frozen causal LM over each completion's tokens.

    Each sequence is the last ``max_prompt_tokens`` prompt tokens (context only) followed by
    the first ``max_completion_tokens`` completion tokens, right-padded. For every layer in
    ``config.layers`` the hidden states of the completion tokens are mean-pooled, or the
    last completion token's state is taken, or both (``mean_last``); the pieces are
    concatenated. Only the transformer body runs (no LM head), and only up to the deepest
    requested layer's output is used.

    Args:
        model: a Hugging Face causal LM (``output_hidden_states`` supported), frozen.
        prompt_ids, completion_ids: ``N`` token id lists each; an empty completion is
            pooled over its last prompt token instead.
        config: layers, pooling and truncation.
        pad_id: id used for padding (masked out).
        batch_size: sequences per forward pass.

    Returns:
        ``features (N, F)`` float32 with ``F = len(layers) * d_model * (2 if mean_last else 1)``,
        on the model's device (the inputs are sent there, as ``pgcore.logprobs.score_completions``
        does).

    Raises:
        ValueError: the two lists differ in length, or a layer index is out of range.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    body = getattr(model, "model", model)
    n_layers = int(model.config.num_hidden_layers)
    for layer in config.layers:
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(f"layer {layer} outside the model's hidden states [-{n_layers + 1}, {n_layers}]")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            rows, pool_from = [], []
            for p, c in zip(prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]):
                p = list(p)[-config.max_prompt_tokens :] if config.max_prompt_tokens else []
                c = list(c)[: config.max_completion_tokens]
                if not c and not p:
                    raise ValueError("a completion with neither prompt nor completion tokens has no features")
                rows.append(p + c)
                pool_from.append(len(p) if c else len(p) - 1)
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            pool_mask = torch.zeros((len(rows), width))
            last_index = torch.zeros(len(rows), dtype=torch.long)
            for i, (r, f) in enumerate(zip(rows, pool_from)):
                input_ids[i, : len(r)] = torch.tensor(r)
                attention_mask[i, : len(r)] = 1
                pool_mask[i, f : len(r)] = 1.0
                last_index[i] = len(r) - 1
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            pool_mask, last_index = pool_mask.to(device), last_index.to(device)
            hidden = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
            pieces = []
            for layer in config.layers:
                h = hidden[layer].float()  # (B, T, D)
                if config.pooling in ("mean", "mean_last"):
                    pieces.append((h * pool_mask[..., None]).sum(1) / pool_mask.sum(1, keepdim=True))
                if config.pooling in ("last", "mean_last"):
                    pieces.append(h[torch.arange(len(rows), device=device), last_index])
            out.append(torch.cat(pieces, dim=-1))
    finally:
        model.train(was_training)
    if not out:
        d = int(model.config.hidden_size) * len(config.layers) * (2 if config.pooling == "mean_last" else 1)
        return torch.zeros(0, d, device=device)
    return torch.cat(out)


# ---------------------------------------------------------------- the ensemble


class RewardModel(torch.nn.Module):
    """``K`` heads over standardised (optionally PCA-projected) features; :meth:`score` gives
    their mean and spread.

    Inputs: ``x = (features - feature_mean) / feature_std`` ``(N, F)``, then, with
    ``config.pca_dim``, ``x @ projection`` ``(N, I)`` (``I`` = ``n_inputs`` components).
    Parameters are stacked over members so all ``K`` train in one batched pass:
    linear ``w (K, I)``, ``b (K,)``; MLP ``w1 (K, I, H)``, ``b1 (K, H)``, ``w (K, H)``, ``b (K,)``.
    """

    def __init__(self, n_features: int, config: RewardModelConfig, n_inputs: int | None = None):
        super().__init__()
        self.config = config
        K, H = config.n_members, config.hidden
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        if n_inputs is not None:
            self.register_buffer("projection", torch.zeros(n_features, n_inputs))
        else:
            self.projection = None
        n_features = n_inputs if n_inputs is not None else n_features
        if config.head in ("linear", "ridge"):
            self.w = torch.nn.Parameter(torch.zeros(K, n_features))
        else:
            self.w1 = torch.nn.Parameter(torch.randn(K, n_features, H) / math.sqrt(n_features))
            self.b1 = torch.nn.Parameter(torch.zeros(K, H))
            self.w = torch.nn.Parameter(torch.randn(K, H) / math.sqrt(H))
        self.b = torch.nn.Parameter(torch.zeros(K))

    @property
    def n_features(self) -> int:
        return int(self.feature_mean.numel())

    @property
    def n_inputs(self) -> int | None:
        return None if self.projection is None else int(self.projection.shape[1])

    def inputs(self, features: torch.Tensor) -> torch.Tensor:
        """``features (N, F)`` -> the heads' inputs ``(N, I)``."""
        x = (features - self.feature_mean) / self.feature_std
        return x if self.projection is None else x @ self.projection

    def member_rewards(self, features: torch.Tensor, *, standardised: bool = False) -> torch.Tensor:
        """``features (N, F)`` (with ``standardised``: the inputs ``(N, I)``) -> members' rewards ``(K, N)``."""
        x = features if standardised else self.inputs(features)
        if self.config.head in ("linear", "ridge"):
            return torch.einsum("nf,kf->kn", x, self.w) + self.b[:, None]
        hidden = F.gelu(torch.einsum("nf,kfh->knh", x, self.w1) + self.b1[:, None, :])  # (K, N, H)
        return torch.einsum("knh,kh->kn", hidden, self.w) + self.b[:, None]

    @torch.no_grad()
    def score(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted reward and uncertainty per completion.

        Args:
            features: ``(N, F)`` from :func:`completion_features` with this model's config.

        Returns:
            ``(mean (N,), std (N,))`` in reward units; ``std`` is the population standard
            deviation over the ``K`` members (0 when ``K == 1``).

        Raises:
            ValueError: ``features`` has the wrong width or is not finite.
        """
        features = torch.as_tensor(features, dtype=torch.float32)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"features must be (N, {self.n_features}), got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features must be finite")
        rewards = self.member_rewards(features)  # (K, N)
        return rewards.mean(0), rewards.std(0, unbiased=False)


def score(model: RewardModel, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (N,), std (N,))`` of ``model`` on ``features (N, F)``; see :meth:`RewardModel.score`."""
    return model.score(features)


def _bootstrap_weights(n: int, K: int, generator: torch.Generator, enabled: bool) -> torch.Tensor:
    """``(K, n)`` counts of each item in each member's resample of size ``n`` (ones if disabled)."""
    if not enabled or n == 0:
        return torch.ones(K, n)
    draws = torch.randint(0, n, (K, n), generator=generator)
    return torch.zeros(K, n).scatter_add_(1, draws, torch.ones(K, n))



def _ridge_design(x: torch.Tensor, judgments: Judgments, config: RewardModelConfig):
    """Least-squares rows of every judgment: ``(design (R+P, I+1), target (R+P,), row_scale (R+P,))``.

    A rating is the row ``[x_i, 1]`` with target ``y_i``. A comparison is the row
    ``[x_a - x_b, 0]`` (the bias cancels) with target ``2 (2 t - 1)``: the score gap a
    decided pair has in ``pgcore.rewards`` (win +1, loss -1), 0 for a tie; a squared-error
    surrogate of the Bradley–Terry term, weighted ``pairwise_weight``.
    """
    x = x.double()
    ones = torch.ones(judgments.n_ratings, 1, dtype=torch.float64)
    rating_rows = torch.cat([x[judgments.rating_index], ones], dim=1)
    pair_rows = torch.cat(
        [x[judgments.pair_a] - x[judgments.pair_b], torch.zeros(judgments.n_pairs, 1, dtype=torch.float64)], dim=1
    )
    design = torch.cat([rating_rows, pair_rows])
    target = torch.cat([judgments.rating_target.double(), 2.0 * (2.0 * judgments.pair_target.double() - 1.0)])
    row_scale = torch.cat(
        [torch.ones(judgments.n_ratings, dtype=torch.float64),
         torch.full((judgments.n_pairs,), float(config.pairwise_weight), dtype=torch.float64)]
    )
    return design, target, row_scale


def _ridge_solve(design: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weighted ridge: ``argmin_w sum_i weight_i (design_i w - target_i)^2 + alpha |w[:-1]|^2``.

    ``design (M, D)``, ``target (M,)``, ``weight (..., M)`` -> ``w (..., D)`` (float64); the
    last column (the bias) is not penalised. Solved through the normal equations
    ``(A^T W A + alpha P) w = A^T W y`` (Hoerl & Kennard 1970) by a Cholesky factorisation
    (the matrix is symmetric positive definite), one leading index at a time: batched LU
    solves of this size failed inside MKL (``DLASWP``) on the project's CPU build of torch.
    """
    D = design.shape[1]
    penalty = torch.eye(D, dtype=torch.float64) * alpha
    penalty[-1, -1] = 1e-9  # the bias is free; a tiny term keeps the system regular without ratings
    lead = weight.shape[:-1]
    weights = weight.reshape(-1, weight.shape[-1])  # (B, M)
    out = torch.empty(weights.shape[0], D, dtype=torch.float64)
    for i, w in enumerate(weights):
        weighted = design * w[:, None]  # (M, D)
        gram = weighted.T @ design + penalty  # (D, D)
        rhs = weighted.T @ target  # (D,)
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            out[i] = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
        else:  # not positive definite in floating point (alpha ~ 0, collinear rows): least squares
            out[i] = torch.linalg.lstsq(gram, rhs[:, None]).solution[:, 0]
    return out.reshape(*lead, D)


def _ridge_alpha(design: torch.Tensor, target: torch.Tensor, row_scale: torch.Tensor, config: RewardModelConfig) -> float:
    """``config.ridge_alpha``, or (when 0) the :data:`RIDGE_ALPHAS` entry with the least
    weighted squared error over :data:`RIDGE_FOLDS` folds (fold = row index mod 5, so seed-free)."""
    if config.ridge_alpha > 0:
        return float(config.ridge_alpha)
    M = design.shape[0]
    if M < 2 * RIDGE_FOLDS:
        return 1.0
    folds = torch.arange(M) % RIDGE_FOLDS
    errors = []
    for alpha in RIDGE_ALPHAS:
        err = 0.0
        for f in range(RIDGE_FOLDS):
            train = (folds != f).double() * row_scale
            w = _ridge_solve(design, target, train, alpha)
            held = folds == f
            err += float((row_scale[held] * (design[held] @ w - target[held]) ** 2).sum())
        errors.append(err)
    return RIDGE_ALPHAS[min(range(len(errors)), key=errors.__getitem__)]


def fit(
    features: torch.Tensor,
    judgments: Judgments,
    config: RewardModelConfig | None = None,
) -> tuple[RewardModel, dict]:
    """Train the ensemble on judgments of completions whose features are given.

    Features are standardised with the training rows' mean and standard deviation (a
    constant column gets std 1). Each member ``k`` draws bootstrap counts over the ratings
    and, separately, over the comparisons, and minimises :func:`judgment_loss` weighted by
    them (times the judgments' own ``rating_weight`` / ``pair_weight``) with full-batch AdamW for
    ``config.epochs`` steps; a ``ridge`` head instead solves
    each member's weighted least squares in closed form (:func:`_ridge_solve`; comparisons
    enter as difference rows, :func:`_ridge_design`; ``epochs``, ``lr`` and ``input_dropout``
    are unused, and the members differ only through their bootstrap counts). Members are initialised
    differently (seeded by ``config.seed``), so even without bootstrap they disagree away
    from the data. The output bias starts at the (weighted) mean rating target.

    Args:
        features: ``(N, F)`` float, finite; rows no judgment refers to are ignored (also in
            the standardisation).
        judgments: at least one judgment, indices within ``[0, N)``.
        config: defaults to ``RewardModelConfig()``.

    Returns:
        ``(model, metrics)``; metrics (floats): ``loss/initial``, ``loss/final`` (the loss of
        the ensemble mean on all judgments, weighted by their own weights, no bootstrap), ``loss/members_final`` (the
        mean of the members' own bootstrap-weighted losses), ``fit/seconds``,
        ``fit/n_ratings``, ``fit/n_pairs``, ``fit/n_features`` (and ``fit/ridge_alpha`` for a
        ridge head).

    Raises:
        ValueError: no judgment, an index out of range, non-finite features or targets.
    """
    config = config or RewardModelConfig()
    features = torch.as_tensor(features, dtype=torch.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("features must be finite")
    if len(judgments) == 0:
        raise ValueError("a reward model needs at least one judgment")
    judgments.check_rows(features.shape[0])
    started = time.perf_counter()
    K = config.n_members
    generator = torch.Generator().manual_seed(config.seed)

    # Train on the judged rows only, re-indexed 0..U-1.
    rows = torch.cat([judgments.rating_index, judgments.pair_a, judgments.pair_b])
    used, inverse = torch.unique(rows, return_inverse=True)
    R, P = judgments.n_ratings, judgments.n_pairs
    judgments = Judgments(
        inverse[:R], judgments.rating_target, inverse[R : R + P], inverse[R + P :], judgments.pair_target,
        judgments.rating_weight, judgments.pair_weight,
    )
    features = features[used]  # (U, F)
    mean = features.mean(0)
    std = features.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    x = (features - mean) / std  # (U, F)
    projection = None
    if config.pca_dim and config.pca_dim < features.shape[1]:
        # Principal directions of the judged rows, scaled so the first has unit variance.
        k = max(1, min(config.pca_dim, features.shape[0]))
        _u, singular, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
        top = float(singular[0]) / math.sqrt(features.shape[0])
        projection = vh[:k].T / (top if top > 1e-6 else 1.0)  # (F, k)
        x = x @ projection  # (U, k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RewardModel(features.shape[1], config, None if projection is None else projection.shape[1])
    model.feature_mean.copy_(mean)
    model.feature_std.copy_(std)
    if projection is not None:
        model.projection.copy_(projection)
    if judgments.n_ratings:
        total = float(judgments.rating_weight.sum())
        start = (
            float((judgments.rating_weight * judgments.rating_target).sum()) / total
            if total > 0 else float(judgments.rating_target.mean())
        )
        with torch.no_grad():
            model.b.fill_(start)

    # Each member's weights: its bootstrap counts times the judgments' own weights.
    rating_weight = _bootstrap_weights(judgments.n_ratings, K, generator, config.bootstrap) * judgments.rating_weight
    pair_weight = _bootstrap_weights(judgments.n_pairs, K, generator, config.bootstrap) * judgments.pair_weight
    rating_target = judgments.rating_target.expand(K, -1)
    pair_target = judgments.pair_target.expand(K, -1)

    def member_losses(rewards: torch.Tensor, rw=rating_weight, pw=pair_weight) -> torch.Tensor:
        return judgment_loss(
            rewards[:, judgments.rating_index],
            rating_target[: rewards.shape[0]],
            rewards[:, judgments.pair_a] - rewards[:, judgments.pair_b],
            pair_target[: rewards.shape[0]],
            bt_scale=config.bt_scale,
            pairwise_weight=config.pairwise_weight,
            rating_weight=rw,
            pair_weight=pw,
        )

    def ensemble_loss() -> float:
        with torch.no_grad():
            mean_reward = model.member_rewards(x, standardised=True).mean(0, keepdim=True)  # (1, N)
            own_r, own_p = judgments.rating_weight[None], judgments.pair_weight[None]
            return float(member_losses(mean_reward, own_r, own_p)[0])

    initial = ensemble_loss()
    extra: dict = {}
    if config.head == "ridge":
        # Closed form per member: the bootstrap counts weight the rows of one shared design.
        design, target, row_scale = _ridge_design(x, judgments, config)
        own = torch.cat([judgments.rating_weight, judgments.pair_weight]).double()
        alpha = _ridge_alpha(design, target, row_scale * own, config)
        counts = torch.cat([rating_weight, pair_weight], dim=1).double() * row_scale  # (K, R+P), own weights in
        solution = _ridge_solve(design, target, counts, alpha)  # (K, I+1)
        with torch.no_grad():
            model.w.copy_(solution[:, :-1].float())
            model.b.copy_(solution[:, -1].float())
        extra["fit/ridge_alpha"] = alpha
    else:
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        drop_gen = torch.Generator().manual_seed(config.seed + 1)
        model.train()
        for _ in range(config.epochs):
            if config.input_dropout > 0:
                keep = (torch.rand(x.shape, generator=drop_gen) >= config.input_dropout).float()
                inputs = x * keep / (1.0 - config.input_dropout)
            else:
                inputs = x
            losses = member_losses(model.member_rewards(inputs, standardised=True))  # (K,)
            optimiser.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimiser.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        members_final = float(member_losses(model.member_rewards(x, standardised=True)).mean())
    metrics = {
        "loss/initial": initial,
        "loss/final": ensemble_loss(),
        "loss/members_final": members_final,
        "fit/seconds": time.perf_counter() - started,
        "fit/n_ratings": float(judgments.n_ratings),
        "fit/n_pairs": float(judgments.n_pairs),
        "fit/n_features": float(features.shape[1]),
        **extra,
    }
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise ValueError(f"reward model fit produced non-finite {name}")
    return model, metrics


# ---------------------------------------------------------------- held-out metrics


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), float64, 0-based."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    for value in torch.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation of two ``(N,)`` tensors; ``None`` when undefined (N < 2 or a constant)."""
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    if x.numel() < 2:
        return None
    xc, yc = x - x.mean(), y - y.mean()
    denominator = float((xc.square().sum() * yc.square().sum()).sqrt())
    return float((xc * yc).sum()) / denominator if denominator > 1e-12 else None


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); ``None`` when undefined."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.numel() < 2:
        return None
    return pearson(_ranks(x), _ranks(y))


def _pair_agreement(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N,)`` each -> ``(agree (N, N) float64, use (N, N) bool)``: ``agree[i, j]`` is 1 when ``pred``
    orders ``i, j`` as ``target`` does, 1/2 when ``pred`` ties them, else 0; ``use`` marks the pairs
    ``i < j`` that differ in ``target``."""
    pred, target = torch.as_tensor(pred).double().reshape(-1), torch.as_tensor(target).double().reshape(-1)
    dp = pred[:, None] - pred[None, :]
    dt = target[:, None] - target[None, :]
    use = torch.triu(torch.ones_like(dt, dtype=torch.bool), diagonal=1) & (dt != 0)
    agree = torch.where(dp == 0, 0.5, (torch.sign(dp) == torch.sign(dt)).double())
    return agree, use


def pairwise_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float | None:
    """Share of pairs ``i < j`` with ``target_i != target_j`` that ``pred`` orders the same way.

    Ties in ``pred`` count one half. ``None`` when no pair differs in ``target``. ``(N,)`` each.
    """
    agree, use = _pair_agreement(pred, target)
    return float(agree[use].mean()) if use.any() else None


def within_prompt_accuracy(
    pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[float | None, int]:
    """Pairwise accuracy on pairs of one group only: how often ``pred`` orders two rated
    completions of the same prompt as people rated them.

    This is the ranking a policy update with a leave-one-out group baseline uses (it compares
    completions of one prompt, never across prompts), so it is the accuracy that decides
    whether reward-model scores help the update; pairs of different prompts also reward
    knowing which prompts get high ratings, which the baseline subtracts anyway. Pass
    held-out (or leave-one-out) predictions: in-sample ones overstate it.

    Pairs ``i < j`` with ``groups_i == groups_j`` and ``target_i != target_j``; a pair
    scores 1 when ``pred`` orders it as ``target`` does, 1/2 when ``pred`` ties, else 0, and
    weighs ``weight_i * weight_j`` (ones when not given).

    Args:
        pred, target, groups, weight: ``(N,)`` each; ``groups`` any integer label (the prompt).

    Returns:
        ``(accuracy, n_pairs)``: the weighted share (``None`` when no pair, or all pairs weigh
        0) and the unweighted number of pairs.

    Raises:
        ValueError: the tensors differ in length.
    """
    target = torch.as_tensor(target).double().reshape(-1)
    groups = torch.as_tensor(groups).reshape(-1)
    weight = torch.ones_like(target) if weight is None else torch.as_tensor(weight).double().reshape(-1)
    if not (torch.as_tensor(pred).numel() == target.numel() == groups.numel() == weight.numel()):
        raise ValueError("pred, target, groups and weight need one entry per completion")
    agree, use = _pair_agreement(pred, target)
    use = use & (groups[:, None] == groups[None, :])
    pair_w = (weight[:, None] * weight[None, :])[use]
    total = float(pair_w.sum())
    n_pairs = int(use.sum())
    return (float((pair_w * agree[use]).sum()) / total if total > 0 else None), n_pairs


def effective_pairs(weight_sum: float, weight_square_sum: float) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of pairs weighted ``w`` (Kish 1965,
    *Survey Sampling*, 8.2): the number of equally weighted pairs whose weighted mean is as
    precise. Equal weights give the pair count; one pair carrying all the weight gives 1.

    Args:
        weight_sum: ``sum w`` over the pairs (weights >= 0).
        weight_square_sum: ``sum w^2`` over the same pairs.

    Returns:
        The effective number of pairs, ``0.0`` when ``weight_square_sum`` is 0 (no weighted pair).

    Raises:
        ValueError: a negative sum.
    """
    if weight_sum < 0 or weight_square_sum < 0:
        raise ValueError(f"weight sums must be >= 0, got {weight_sum} and {weight_square_sum}")
    return float(weight_sum * weight_sum / weight_square_sum) if weight_square_sum > 0 else 0.0


def accuracy_lower_bound(accuracy: float | None, n_pairs: float, *, quantile: float = 0.1) -> float | None:
    """One-sided lower confidence bound of an accuracy measured on ``n_pairs`` pairs (for a weighted
    accuracy, their effective number, :func:`effective_pairs`): the Wilson
    score bound (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it for small ``n``) at
    ``1 - quantile`` confidence (``quantile`` 0.1: z = 1.2816).

    Unlike the 10th percentile of a bootstrap it does not collapse onto the estimate for few
    pairs (8 pairs all right: 0.83, not 1.0). It treats the pairs as independent, which holds
    for two rated completions per prompt and overstates the confidence for more (pairs of
    one prompt share completions).

    Returns:
        The bound in [0, 1]; ``None`` when ``accuracy`` is None or ``n_pairs`` < 1.

    Raises:
        ValueError: ``accuracy`` outside [0, 1] or ``quantile`` outside (0, 0.5].
    """
    if accuracy is None or n_pairs < 1:
        return None
    if not 0.0 <= float(accuracy) <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    if not 0.0 < quantile <= 0.5:
        raise ValueError(f"quantile must lie in (0, 0.5], got {quantile}")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1.0 - quantile)
    p, n = float(accuracy), float(n_pairs)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


# ---------------------------------------------------------------- trust: how far to follow the reward model

# Pairwise accuracy at which reward-model-scored samples get no weight (chance) and full weight.
TRUST_CHANCE = 0.5
TRUST_FULL = 0.8
TRUST_FOLDS = 5
TRUST_BOOTSTRAP = 200
# One-sided lower bound: the 10th percentile of the bootstrap, so "above chance with 90% confidence".
TRUST_QUANTILE = 0.1
# Below this many within-prompt pairs (pairs of rated completions of one prompt, and decided
# comparisons) the weight rests on all pairs of the held-out fold instead. Few pairs are safe
# because their lower bound is also the Wilson bound (:func:`accuracy_lower_bound`: 8 pairs all
# ordered right give 0.83, 8 pairs at 0.75 give 0.52); it was 30, which two rated completions
# per prompt reach only after about 96 ratings (Likert ties leave out a third of the pairs).
TRUST_MIN_WITHIN_PAIRS = 8


def trust_weight(accuracy: float | None, *, chance: float = TRUST_CHANCE, full: float = TRUST_FULL) -> float:
    """Weight in [0, 1] of samples scored by a reward model that orders pairs right ``accuracy`` of the time.

    ``0`` at or below ``chance`` (the model's ranking then carries no signal: a policy update
    on its scores moves the policy at random), rising linearly to ``1`` at ``full`` and
    staying there; ``None`` (accuracy unknown, e.g. no pair to measure it on) gives 0. Meant
    for a lower confidence bound of the accuracy (:func:`cross_validated_accuracy`), so a
    model measured on few judgments counts little. The samples' advantages are multiplied by
    it (``pgcore.trainer.TrainBatch.weights``) while human-rated completions keep theirs.

    Source: Christiano et al. 2017 and Ziegler et al. 2019 optimise the policy against a
    reward model fitted on every label, trusting it fully; Asghari et al. 2026 (arXiv
    2603.17378) make the reward model's uncertainty decide how much it is followed. The linear
    ramp between chance and 0.8 (about the accuracy of one annotator's rating,
    docs/bench/learning/README.md) is this project's choice.

    Raises:
        ValueError: ``chance >= full``, or ``accuracy`` is not finite.
    """
    if not chance < full:
        raise ValueError(f"chance ({chance}) must be below full ({full})")
    if accuracy is None:
        return 0.0
    if not math.isfinite(float(accuracy)):
        raise ValueError(f"accuracy must be finite, got {accuracy}")
    return float(min(1.0, max(0.0, (float(accuracy) - chance) / (full - chance))))


def cross_validated_accuracy(
    features: torch.Tensor,
    judgments: Judgments,
    groups: torch.Tensor,
    config: RewardModelConfig | None = None,
    *,
    folds: int = TRUST_FOLDS,
    n_bootstrap: int = TRUST_BOOTSTRAP,
    quantile: float = TRUST_QUANTILE,
    seed: int = 0,
) -> dict:
    """How often the reward model orders two judged completions right, on data it was not fitted on.

    K-fold cross-validation by group (prompt): the groups are dealt into ``folds`` folds at
    random (``seed``); for each fold the ensemble is fitted (:func:`fit`, ``config``) on the
    judgments of the other folds and its mean predicts the fold's completions. A pair counts
    when both ratings lie in the same fold and differ in target (ties in prediction count one
    half), and every decided comparison of the fold counts as one pair; each pair weighs the
    product of its judgments' weights. So every judgment is held out once, instead of a fixed
    share (a held-out split of 6–22 ratings at 32–128 judgments says little; Efron & Tibshirani
    1993 on cross-validation and the bootstrap). The lower bound is the ``quantile`` of the
    accuracy over ``n_bootstrap`` resamples of the groups with replacement (the pairs' out-of-fold
    predictions kept: the bootstrap measures the sampling of prompts, not of refits).

    ``trust_*`` is the within-prompt accuracy (:func:`within_prompt_accuracy`, what the
    update's leave-one-out baseline uses; folds by prompt keep a prompt's completions held
    out together) when there are at least :data:`TRUST_MIN_WITHIN_PAIRS` within-prompt pairs,
    else the accuracy over all pairs of a fold (``cv/trust_basis`` says which). The
    within-prompt lower bound is the smaller of the bootstrap's and the Wilson bound
    (:func:`accuracy_lower_bound`) on its pairs, so a handful of pairs counts for little; the
    Wilson bound takes the weighted accuracy with the pairs' effective number
    (:func:`effective_pairs`), so unequal weights count as fewer pairs.

    Args:
        features: ``(N, F)`` as for :func:`fit`.
        judgments: over rows of ``features``.
        groups: ``(N,)`` int, the prompt of each row.
        folds: >= 2 (fewer groups than folds: one fold per group).

    Returns:
        Floats or None: ``cv/pairwise_accuracy``, ``cv/pairwise_accuracy_low``, ``cv/n_pairs``,
        ``cv/within_prompt_accuracy``, ``cv/within_prompt_accuracy_low``, ``cv/within_prompt_pairs``,
        ``cv/within_prompt_effective_pairs`` (:func:`effective_pairs` of those pairs' weights),
        ``cv/trust_accuracy``, ``cv/trust_accuracy_low``, ``cv/trust_basis`` (``"within_prompt"`` or
        ``"all_pairs"``), ``cv/folds`` and ``cv/seconds``. Accuracies are None without a pair.

    Raises:
        ValueError: ``folds < 2``, ``groups`` of the wrong shape, or what :func:`fit` raises.
    """
    started = time.perf_counter()
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    features = torch.as_tensor(features, dtype=torch.float32)
    groups = torch.as_tensor(groups, dtype=torch.long).reshape(-1)
    if groups.shape[0] != features.shape[0]:
        raise ValueError(f"groups needs one entry per feature row: {groups.shape[0]} for {features.shape[0]}")
    judgments.check_rows(features.shape[0])
    names, group_of = torch.unique(groups, return_inverse=True)  # group_of: (N,) in [0, G)
    G = int(names.numel())
    generator = torch.Generator().manual_seed(seed)
    fold_of_group = torch.empty(G, dtype=torch.long)
    fold_of_group[torch.randperm(G, generator=generator)] = torch.arange(G) % min(folds, max(G, 1))
    rating_fold = fold_of_group[group_of[judgments.rating_index]]  # (R,)
    pair_fold = fold_of_group[group_of[judgments.pair_a]]  # (P,)
    agree_sum = torch.zeros(G, G, dtype=torch.float64)  # [g1, g2]: weighted agreements of rating pairs
    weight_sum = torch.zeros(G, G, dtype=torch.float64)
    comp_agree = torch.zeros(G, dtype=torch.float64)  # per group: decided comparisons
    comp_weight = torch.zeros(G, dtype=torch.float64)
    used_folds = 0
    n_pairs = {False: 0, True: 0}  # unweighted counts: all pairs, within-prompt pairs
    within_w = [0.0, 0.0]  # within-prompt pairs' weights: sum, sum of squares (effective sample size)
    for f in range(min(folds, G)):
        test_r, test_p = rating_fold == f, pair_fold == f
        train = Judgments(
            judgments.rating_index[~test_r], judgments.rating_target[~test_r],
            judgments.pair_a[~test_p], judgments.pair_b[~test_p], judgments.pair_target[~test_p],
            rating_weight=judgments.rating_weight[~test_r], pair_weight=judgments.pair_weight[~test_p],
        )
        if len(train) == 0 or not (test_r.any() or test_p.any()):
            continue
        model, _ = fit(features, train, config)
        pred = model.score(features)[0].double()  # (N,)
        used_folds += 1
        idx = judgments.rating_index[test_r]
        if idx.numel() >= 2:
            target = judgments.rating_target[test_r].double()
            w = judgments.rating_weight[test_r].double()
            agree, use = _pair_agreement(pred[idx], target)
            g = group_of[idx]
            both_w = w[:, None] * w[None, :]  # (n, n): a pair's weight, the product of its two ratings'
            pair_w = both_w[use]
            flat = g[:, None].expand_as(use)[use] * G + g[None, :].expand_as(use)[use]
            n_pairs[False] += int(use.sum())
            same = use & (g[:, None] == g[None, :])
            n_pairs[True] += int(same.sum())
            same_w = both_w[same]
            within_w[0] += float(same_w.sum())
            within_w[1] += float((same_w * same_w).sum())
            weight_sum.view(-1).index_add_(0, flat, pair_w)
            agree_sum.view(-1).index_add_(0, flat, pair_w * agree[use])
        decided = test_p & (judgments.pair_target != 0.5)
        if decided.any():
            diff = pred[judgments.pair_a[decided]] - pred[judgments.pair_b[decided]]
            won = judgments.pair_target[decided] > 0.5
            agree = torch.where(diff == 0, 0.5, ((diff > 0) == won).double())
            w = judgments.pair_weight[decided].double()
            g = group_of[judgments.pair_a[decided]]
            n_pairs[False] += int(decided.sum())
            n_pairs[True] += int(decided.sum())
            within_w[0] += float(w.sum())
            within_w[1] += float((w * w).sum())
            comp_weight.index_add_(0, g, w)
            comp_agree.index_add_(0, g, w * agree)

    def accuracy(counts: torch.Tensor, within: bool) -> torch.Tensor:
        """``(B, G)`` group counts -> ``(B,)`` accuracy (NaN without a pair)."""
        a, w = (torch.diag_embed(agree_sum.diagonal()), torch.diag_embed(weight_sum.diagonal())) if within else (
            agree_sum, weight_sum)
        num = ((counts @ a) * counts).sum(1) + counts @ comp_agree
        den = ((counts @ w) * counts).sum(1) + counts @ comp_weight
        return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(den, float("nan")))

    ones = torch.ones(1, G, dtype=torch.float64)
    resample = torch.zeros(n_bootstrap, G, dtype=torch.float64).scatter_add_(
        1, torch.randint(0, G, (n_bootstrap, G), generator=generator), torch.ones(n_bootstrap, G, dtype=torch.float64)
    ) if G else torch.zeros(0, 0, dtype=torch.float64)
    out: dict = {"cv/folds": float(used_folds)}
    for name, within in (("pairwise_accuracy", False), ("within_prompt_accuracy", True)):
        point = float(accuracy(ones, within)[0]) if G else float("nan")
        boot = accuracy(resample, within) if G else torch.zeros(0, dtype=torch.float64)
        boot = boot[~torch.isnan(boot)]
        out[f"cv/{name}"] = point if math.isfinite(point) else None
        out[f"cv/{name}_low"] = (
            float(torch.quantile(boot, quantile)) if out[f"cv/{name}"] is not None and boot.numel() else None
        )
    out["cv/n_pairs"], out["cv/within_prompt_pairs"] = float(n_pairs[False]), float(n_pairs[True])
    out["cv/within_prompt_effective_pairs"] = effective_pairs(*within_w)
    # Within-prompt pairs are few early on, where the bootstrap's quantile sits on the estimate.
    # The accuracy is weighted, so the bound counts the pairs the weights leave (Kish 1965).
    wilson = accuracy_lower_bound(
        out["cv/within_prompt_accuracy"], out["cv/within_prompt_effective_pairs"], quantile=quantile
    )
    if wilson is not None and out["cv/within_prompt_accuracy_low"] is not None:
        out["cv/within_prompt_accuracy_low"] = min(out["cv/within_prompt_accuracy_low"], wilson)
    basis = "within_prompt" if out["cv/within_prompt_pairs"] >= TRUST_MIN_WITHIN_PAIRS else "all_pairs"
    key = "within_prompt_accuracy" if basis == "within_prompt" else "pairwise_accuracy"
    out["cv/trust_basis"] = basis
    out["cv/trust_accuracy"], out["cv/trust_accuracy_low"] = out[f"cv/{key}"], out[f"cv/{key}_low"]
    out["cv/seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------- storage


def save_reward_model(model: RewardModel, out_dir: str | os.PathLike, *, metadata: dict | None = None) -> str:
    """Write ``model`` to ``out_dir`` atomically; return the SHA-256 of its weights.

    ``out_dir`` holds ``reward_model.safetensors`` (tensors), ``reward_model.json`` (config,
    feature count and ``metadata``) and ``pgcore_checksum.json``, written by
    :func:`pgcore.policy.atomic_directory`: the folder is complete or untouched.
    """
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    meta = {
        "format": _FORMAT,
        "config": model.config.to_dict(),
        "n_features": model.n_features,
        "n_inputs": model.n_inputs,
        "metadata": metadata or {},
    }
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return weights_sha256(out_dir)


def load_reward_model(directory: str | os.PathLike, *, expected_sha256: str | None = None) -> tuple[RewardModel, dict]:
    """Load a folder written by :func:`save_reward_model`; return ``(model, metadata)``.

    The weights' SHA-256 is checked first against ``expected_sha256``, else against the
    folder's own record.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ChecksumError: the weights do not match the checksum, or the files cannot be read
            as a reward model (corrupt).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"reward model folder {directory} does not exist")
    for name in (WEIGHTS_FILE, META_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"reward model folder {directory} has no {name}")
    if expected_sha256 is None:
        try:
            expected_sha256 = json.loads((directory / CHECKSUM_FILE).read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChecksumError(f"reward model in {directory} has no readable checksum record: {exc}") from exc
    verify_weights(directory, expected_sha256)
    try:
        meta = json.loads((directory / META_FILE).read_text())
        config = RewardModelConfig.from_dict(meta["config"])
        model = RewardModel(int(meta["n_features"]), config, meta.get("n_inputs"))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ChecksumError(f"reward model in {directory} is unreadable: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    return model, meta.get("metadata", {})
