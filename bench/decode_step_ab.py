"""One decoding step of pgcore's sampler, another checkout's code against this one, in one process.

Loads ``pgcore/rollout.py`` of ``--old`` (default ``/work/wt/base``, untouched main) beside this
tree's, builds each one's sampling copy of SmolLM2-135M in ``--precision`` (fp32: a copy that
this tree fuses, :func:`pgcore.rollout.fuse_projections`), and times ``_forward_fast`` for one
new token per row at ``--batch`` rows over a key/value cache of ``--cache-cols`` columns,
the two codes alternated ``--reps`` times (which goes first alternates too), CPU time
(``time.process_time``) per step. Checks first that both give the same logits: bit for bit,
or (a change that rounds differently) within ``--atol`` (default 0: bit for bit), and reports
the largest difference.

Prints ONE JSON object: median CPU ms per step of each code and their ratio (new / old), and the
ratio of each alternation's pair (``pair_ratios``: one per rep, their spread is the noise).
Not a test. Usage: python bench/decode_step_ab.py [--old DIR] [--precision bf16] [--batch 32]
[--threads 1] [--reps 30] [--cache-cols 100] [--atol 0] [--same-model] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pgcore import rollout as new  # noqa: E402
from pgcore.policy import load_policy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, default=Path("/work/wt/base"))
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--cache-cols", type=int, default=100)
    p.add_argument("--atol", type=float, default=0.0)
    p.add_argument("--same-model", action="store_true", help="both codes run this tree's sampling copy (fp32: fused), so only the step's code differs")
    p.add_argument("--model-dir", type=Path, default=Path("var/models/smollm2-135m-instruct"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("old_rollout", args.old / "pgcore" / "rollout.py")
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_rollout"] = old
    spec.loader.exec_module(old)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    policy = load_policy(args.model_dir)
    if dtype == torch.float32:  # a plain fp32 policy samples as it is (unfused): fuse a copy, as a LoRA merge would
        fused = copy.deepcopy(policy.model).eval().requires_grad_(False)
        new.fuse_projections(fused)
    else:
        fused = new.sampling_model(policy, dtype=dtype)
    plain = fused if args.same_model else old.sampling_model(policy, dtype=dtype)
    b, T = args.batch, args.cache_cols
    n_kv, d = new._kv_shape(fused.model)
    n_layers = len(fused.model.layers)
    g = torch.Generator().manual_seed(0)
    kv = [[torch.randn(b, n_kv, T + 60, d, generator=g).to(dtype) for _ in range(n_layers)] for _ in range(2)]
    caches = {side: [[c.clone() for c in part] for part in kv] for side in ("old", "new")}
    ids = torch.randint(0, fused.lm_head.weight.shape[0], (b, 1), generator=g)
    cols = torch.full((b,), T - 1)
    mask = torch.ones(b, 1, 1, T, dtype=torch.bool)
    out = {side: torch.empty(b, fused.lm_head.weight.shape[0]) for side in ("old", "new")}

    def step(side):
        model, forward = (plain, old._forward_fast) if side == "old" else (fused, new._forward_fast)
        with torch.no_grad():
            return forward(model.model, model.lm_head, ids, cols[:, None], mask, *caches[side], cols, out=out[side])

    for side in ("old", "new"):
        step(side)
    diff = (step("old") - step("new")).abs().max().item()
    assert diff <= args.atol, f"the two codes' logits differ by up to {diff}"
    cpu = {"old": [], "new": []}
    for r in range(args.reps):
        for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
            t = time.process_time()
            step(side)
            cpu[side].append(time.process_time() - t)
    med = {side: sorted(v)[len(v) // 2] * 1000 for side, v in cpu.items()}
    pairs = sorted(n / o for n, o in zip(cpu["new"], cpu["old"]))
    print(json.dumps({
        "old": str(args.old), "same_model": args.same_model, "precision": args.precision, "batch": b, "threads": args.threads, "reps": args.reps,
        "cache_cols": T, "load_avg": os.getloadavg()[0], "max_logit_diff": diff,
        "old_cpu_ms_median": round(med["old"], 2), "new_cpu_ms_median": round(med["new"], 2),
        "new_over_old": round(med["new"] / med["old"], 3),
        "pair_ratio_p25_p50_p75": [round(pairs[int(q * (len(pairs) - 1))], 3) for q in (0.25, 0.5, 0.75)],
    }))


if __name__ == "__main__":
    main()
