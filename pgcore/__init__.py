"""pgcore: policy-gradient updates of a causal LM from human ratings, in pure PyTorch.

Never imports Django; the web app hands it plain lists and tensors. See DESIGN.md, "pgcore".

The names below load on first use (PEP 562), so ``import pgcore`` or ``from pgcore.config
import PGConfig`` costs no torch import: web processes validate settings without loading torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ChecksumError": "pgcore.policy",
    "Critic": "pgcore.critic",
    "EMABaseline": "pgcore.advantages",
    "NonFiniteError": "pgcore.trainer",
    "PGConfig": "pgcore.config",
    "Policy": "pgcore.policy",
    "RatingRecord": "pgcore.rewards",
    "Rollout": "pgcore.rollout",
    "TrainBatch": "pgcore.trainer",
    "TrainingCancelled": "pgcore.trainer",
    "batch_mean_baseline": "pgcore.advantages",
    "convert_gguf_to_hf": "pgcore.packaging",
    "gae_advantages": "pgcore.critic",
    "generate": "pgcore.rollout",
    "kl_k3": "pgcore.losses",
    "leave_one_out": "pgcore.advantages",
    "likert_to_score": "pgcore.rewards",
    "load_policy": "pgcore.policy",
    "minibatch_order": "pgcore.trainer",
    "pack_sequences": "pgcore.logprobs",
    "pairwise_to_scores": "pgcore.rewards",
    "pg_loss": "pgcore.losses",
    "ratings_to_rewards": "pgcore.rewards",
    "render_prompt": "pgcore.rollout",
    "save_policy_atomic": "pgcore.policy",
    "score_completions": "pgcore.logprobs",
    "sequence_logprobs": "pgcore.logprobs",
    "smollm2_gguf_path": "pgcore.packaging",
    "thumbs_to_score": "pgcore.rewards",
    "update": "pgcore.trainer",
    "verify_weights": "pgcore.policy",
    "weights_sha256": "pgcore.policy",
    "whiten": "pgcore.advantages",
    "write_tiny_model": "pgcore.tiny",
}

__all__ = [
    "ChecksumError",
    "Critic",
    "EMABaseline",
    "NonFiniteError",
    "PGConfig",
    "Policy",
    "RatingRecord",
    "Rollout",
    "TrainBatch",
    "TrainingCancelled",
    "batch_mean_baseline",
    "convert_gguf_to_hf",
    "gae_advantages",
    "generate",
    "kl_k3",
    "leave_one_out",
    "likert_to_score",
    "load_policy",
    "minibatch_order",
    "pack_sequences",
    "pairwise_to_scores",
    "pg_loss",
    "ratings_to_rewards",
    "render_prompt",
    "save_policy_atomic",
    "score_completions",
    "sequence_logprobs",
    "smollm2_gguf_path",
    "thumbs_to_score",
    "update",
    "verify_weights",
    "weights_sha256",
    "whiten",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pgcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
