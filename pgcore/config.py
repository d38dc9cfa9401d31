"""Hyper-parameters of one policy-gradient update, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

BASELINES = ("loo", "mean", "none", "critic")
TIS_CAP_DEFAULT = 2.0


@dataclass
class PGConfig:
    """Settings for :func:`pgcore.trainer.update` and :func:`pgcore.policy.load_policy`.

    Every field is checked in ``__post_init__``; a bad value raises ``ValueError`` whose
    message names the field and the allowed range. Defaults are the fast CPU path measured
    by ``bench/train_step.py``: LoRA (so the reference policy costs no second copy of the
    weights) with bf16 autocast over fp32 master weights, on CPUs that multiply bf16
    natively (``pgcore.trainer.bf16_autocast_active``; elsewhere the update runs in fp32).
    """

    lr: float = 1e-4  # AdamW learning rate, in (0, 1]
    kl_coef: float = 0.05  # beta: weight of the per-token k3 KL(pi || pi_ref) in the loss, >= 0
    clip_eps: float = 0.2  # PPO clip epsilon on the importance ratio, in (0, 1)
    epochs: int = 2  # passes over the batch per update, >= 1
    minibatch_size: int = 8  # sequences per optimiser step, >= 1
    max_grad_norm: float = 1.0  # global gradient-norm clip, > 0
    baseline: str = "loo"  # "loo" (leave-one-out within a prompt), "mean" (batch mean), "none" or "critic" (pgcore.critic)
    critic_ridge: float = 10.0  # baseline "critic": ridge penalty of the value head's fit, in samples, > 0
    critic_decay: float = 0.9  # baseline "critic": weight kept by earlier updates' data at each update, in (0, 1]
    whiten_advantages: bool = False  # scale advantages to unit variance (no-op for N < 2 or zero variance)
    importance_correction: bool = True  # False: ratio treated as 1, plain REINFORCE (ablation)
    annotator_norm: bool = True  # per-annotator z-score of ratings (ablation switch)
    annotator_shrinkage: float = 5.0  # pseudo-ratings pulling an annotator's mean/std to the global ones, >= 0
    use_lora: bool = True  # train a LoRA adapter (Hu et al. 2021) instead of all weights
    lora_r: int = 16  # LoRA rank, >= 1
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r), >= 1
    lora_dropout: float = 0.0  # dropout on the LoRA branch, in [0, 1)
    bf16_autocast: bool = True  # bf16 autocast in training where bf16 matmuls are native (else fp32); fp32 weights
    share_prompts: bool = True  # run each distinct prompt of a minibatch once, its KV cache shared by its completions
    # C of truncated importance sampling (Yao et al. 2025): ratios are taken against the trainer's own
    # logprobs at the start of the update and tokens weighted by min(pi_trainer / mu_sampler, C);
    # 0 = off (ratios against the stored behaviour logprobs). >= 0; costs one no-grad pass per update.
    tis_cap: float = TIS_CAP_DEFAULT
    seed: int = 0  # seeds minibatch shuffling and LoRA initialisation, >= 0

    def __post_init__(self) -> None:
        _check_float(self, "lr", lambda v: 0 < v <= 1, "(0, 1]")
        _check_float(self, "kl_coef", lambda v: v >= 0, "[0, inf)")
        _check_float(self, "clip_eps", lambda v: 0 < v < 1, "(0, 1)")
        _check_int(self, "epochs", 1)
        _check_int(self, "minibatch_size", 1)
        _check_float(self, "max_grad_norm", lambda v: v > 0, "(0, inf)")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        flags = ("whiten_advantages", "importance_correction", "annotator_norm", "use_lora", "bf16_autocast", "share_prompts")
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool (True or False), got {getattr(self, name)!r}")
        _check_float(self, "critic_ridge", lambda v: v > 0, "(0, inf)")
        _check_float(self, "critic_decay", lambda v: 0 < v <= 1, "(0, 1]")
        _check_float(self, "annotator_shrinkage", lambda v: v >= 0, "[0, inf)")
        _check_int(self, "lora_r", 1)
        _check_int(self, "lora_alpha", 1)
        _check_float(self, "lora_dropout", lambda v: 0 <= v < 1, "[0, 1)")
        _check_int(self, "seed", 0)
        _check_float(self, "tis_cap", lambda v: v >= 0, "[0, inf)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PGConfig":
        """Build from a dict such as :meth:`to_dict` returns; missing keys take defaults.

        Raises:
            ValueError: on an unknown key or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PGConfig field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**d)


def _check_float(cfg: PGConfig, name: str, ok, allowed: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
    if not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")
    setattr(cfg, name, float(value))


def _check_int(cfg: PGConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# The reward model's settings live here, beside PGConfig, so a web process can validate them
# without importing torch (pgcore.reward_model re-exports them).
POOLINGS = ("mean", "last", "mean_last")
HEADS = ("linear", "mlp", "ridge")


@dataclass
class RewardModelConfig:
    """How features are pooled and how the head ensemble is trained."""

    layers: tuple[int, ...] = (-1,)  # hidden-state indices to pool (0 = embeddings, -1 = last layer)
    pooling: str = "mean"  # over completion tokens: "mean", "last" or "mean_last" (both, concatenated)
    max_prompt_tokens: int = 64  # prompt tokens kept as context (the last ones), >= 0
    max_completion_tokens: int = 192  # completion tokens read (the first ones), >= 1
    pca_dim: int = 0  # > 0: project standardised features on their top principal components (fit rows)
    head: str = "mlp"  # "linear", "mlp" (one hidden layer, GELU) or "ridge" (linear, fitted in closed form)
    ridge_alpha: float = 0.0  # ridge head: L2 penalty on the weights; 0 = chosen by 5-fold CV from RIDGE_ALPHAS
    hidden: int = 64  # MLP width
    n_members: int = 5  # K, ensemble size, >= 1
    bootstrap: bool = True  # each member trains on a resample (with replacement) of the judgments
    epochs: int = 300  # full-batch Adam steps per member
    lr: float = 3e-3  # Adam learning rate
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    input_dropout: float = 0.1  # dropout on the standardised features while training
    bt_scale: float = 1.0  # beta in sigmoid(beta * (r_a - r_b))
    pairwise_weight: float = 1.0  # weight of one pairwise judgment relative to one rating
    seed: int = 0  # initialisation and resampling

    def __post_init__(self):
        self.layers = tuple(int(i) for i in self.layers)
        if not self.layers:
            raise ValueError("layers must name at least one hidden-state index")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        minimums = {
            "pca_dim": 0, "max_prompt_tokens": 0, "max_completion_tokens": 1, "hidden": 1, "n_members": 1, "epochs": 1
        }
        for name, low in minimums.items():
            if int(getattr(self, name)) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        for name in ("lr", "bt_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "pairwise_weight", "ridge_alpha"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.input_dropout < 1:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RewardModelConfig:
        """Raises TypeError on an unknown field and ValueError on a value out of range."""
        return cls(**d)

    def feature_spec(self) -> dict:
        """What decides the features (a cache key part): layers, pooling, truncation."""
        return {k: self.to_dict()[k] for k in ("layers", "pooling", "max_prompt_tokens", "max_completion_tokens")}
