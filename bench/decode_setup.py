"""What the decoding-step benches share: their arguments, the sampling copy, and a step's inputs.

Used by ``bench/decode_step_profile.py``, ``bench/decode_step_compile.py`` and
``bench/decode_cpu_estimate.py``; not a bench itself.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from pgcore import rollout


def add_step_arguments(p: argparse.ArgumentParser, *, precision: str = "fp32", batch: int = 32, reps: int = 10, threads: int = 1) -> None:
    """``--precision --batch --threads --reps --cache-cols --model-dir``."""
    p.add_argument("--precision", choices=("fp32", "bf16"), default=precision)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--cache-cols", type=int, default=100)
    p.add_argument("--model-dir", type=Path, default=Path("var/models/smollm2-135m-instruct"))


def step_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def parse_and_load(p: argparse.ArgumentParser):
    """Parse ``p``'s arguments, set torch's threads to ``--threads``, load ``--model-dir``'s policy
    and build its sampling copy (:func:`sampling_copy`) in ``--precision``.

    Returns ``(args, dtype, policy, model)``.
    """
    from pgcore.policy import load_policy

    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = step_dtype(args.precision)
    policy = load_policy(args.model_dir)
    return args, dtype, policy, sampling_copy(policy, dtype)


def sampling_copy(policy, dtype: torch.dtype) -> torch.nn.Module:
    """The module that samples: bf16 :func:`pgcore.rollout.sampling_model`; fp32 a fused deep
    copy (a plain fp32 policy samples unfused, as it is; a LoRA merge gives a fused copy)."""
    if dtype != torch.float32:
        return rollout.sampling_model(policy, dtype=dtype)
    model = copy.deepcopy(policy.model).eval().requires_grad_(False)
    rollout.fuse_projections(model)
    return model


def step_inputs(model: torch.nn.Module, dtype: torch.dtype, batch: int, width: int, seed: int = 0):
    """Random key/value caches ``[keys, values]`` (``batch`` rows, ``width`` columns, per layer),
    one token id per row ``(batch, 1)``, and the generator that drew them (seeded ``seed``)."""
    n_kv, d = rollout._kv_shape(model.model)
    g = torch.Generator().manual_seed(seed)
    caches = [[torch.randn(batch, n_kv, width, d, generator=g).to(dtype) for _ in model.model.layers] for _ in range(2)]
    ids = torch.randint(0, model.lm_head.weight.shape[0], (batch, 1), generator=g)
    return caches, ids, g
