"""pgcore: policy-gradient updates of a causal LM from human ratings, in pure PyTorch.

Never imports Django; the web app hands it plain lists and tensors. See DESIGN.md, "pgcore".
"""

from pgcore.advantages import EMABaseline, batch_mean_baseline, leave_one_out, whiten
from pgcore.config import PGConfig
from pgcore.critic import Critic, gae_advantages
from pgcore.logprobs import pack_sequences, score_completions, sequence_logprobs
from pgcore.losses import kl_k3, pg_loss
from pgcore.packaging import convert_gguf_to_hf, smollm2_gguf_path
from pgcore.policy import ChecksumError, Policy, load_policy, save_policy_atomic, verify_weights, weights_sha256
from pgcore.rewards import RatingRecord, likert_to_score, pairwise_to_scores, ratings_to_rewards, thumbs_to_score
from pgcore.rollout import Rollout, generate, render_prompt
from pgcore.tiny import write_tiny_model
from pgcore.trainer import NonFiniteError, TrainBatch, TrainingCancelled, minibatch_order, update

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
