"""A CPU-time estimate of pgcore's sampling speed against the compute limit, for a loaded machine.

Wall-clock tokens/s mean little while others share the cores, so this measures CPU time
(``time.process_time``) at ``--threads`` (default 1) and scales to ``--cores``: the matmul peak
(best of ``--reps`` 2048 x 2048 matmuls), the limit it implies at 2N FLOP per generated token
(N parameters, as ``bench/generate.py``), one decoding step at ``--batch`` rows (the fused
sampling copy, ``_forward_fast`` + log-softmax + draw over ``--cache-cols`` cache columns, median
of ``--reps``), and a whole ``pgcore.rollout.generate`` of ``--batch`` prompts of
``bench/generate.py`` for ``--new-tokens`` (prefill included). Tokens per CPU-second times
``--cores`` is the estimate: an upper bound, it assumes the cores scale perfectly.

Prints ONE JSON object. Not a test. Usage: python bench/decode_cpu_estimate.py [--precision fp32]
[--batch 64] [--threads 1] [--cores 2] [--reps 8] [--new-tokens 24] [--cache-cols 100] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.decode_setup import add_step_arguments, parse_and_load, step_inputs  # noqa: E402
from pgcore import rollout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(p, batch=64, reps=8)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=24)
    args, dtype, policy, model = parse_and_load(p)
    a, m = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    best = float("inf")
    for i in range(args.reps + 2):
        t = time.process_time()
        a @ m
        if i >= 2:
            best = min(best, time.process_time() - t)
    peak = 2 * 2048**3 / best / 1e9  # GFLOP per CPU-second
    n_params = sum(q.numel() for q in policy.model.parameters())
    limit = peak * 1e9 / (2 * n_params)  # tokens per CPU-second
    b, T = args.batch, args.cache_cols
    caches, ids, g = step_inputs(model, dtype, b, T + 60)
    cols = torch.full((b,), T - 1)
    mask = torch.ones(b, 1, 1, T, dtype=torch.bool)
    out, logp_buf, scratch = (torch.empty(b, model.lm_head.weight.shape[0]) for _ in range(3))
    steps = []
    for i in range(args.reps + 1):
        t = time.process_time()
        with torch.no_grad():
            logits = rollout._forward_fast(model.model, model.lm_head, ids, cols[:, None], mask, *caches, cols, out=out)
            rollout.draw_tokens(torch.log_softmax(logits, dim=-1, out=logp_buf), g, False, scratch)
        if i:
            steps.append(time.process_time() - t)
    step_s = sorted(steps)[len(steps) // 2]
    spec = importlib.util.spec_from_file_location("bench_generate", Path(__file__).with_name("generate.py"))
    bench_generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_generate)
    texts = bench_generate.prompts(b)
    rollout.generate(policy, texts[:2], max_new_tokens=2, seed=0, precision=args.precision, batch_size=2)  # warm-up
    t = time.process_time()
    rollouts = rollout.generate(policy, texts, max_new_tokens=args.new_tokens, seed=0, precision=args.precision, batch_size=b)
    gen_s = time.process_time() - t
    tokens = sum(len(r.completion_ids) for r in rollouts)
    per_cpu = {"decode_step": b / step_s, "generate": tokens / gen_s}
    print(json.dumps({
        "precision": args.precision, "batch": b, "threads": args.threads, "cores": args.cores, "reps": args.reps,
        "load_avg": os.getloadavg()[0], "n_params": n_params,
        "matmul_peak_gflops_per_cpu_s": round(peak, 1), "limit_tok_per_cpu_s": round(limit, 1),
        "limit_tok_s_estimate": round(limit * args.cores, 1),
        "decode_step_cpu_ms_median": round(step_s * 1000, 1), "decode_step_cpu_ms_all": [round(s * 1000, 1) for s in steps],
        "generate_new_tokens": args.new_tokens, "generate_tokens": tokens, "generate_cpu_s": round(gen_s, 2),
        "tok_per_cpu_s": {k: round(v, 1) for k, v in per_cpu.items()},
        "tok_s_estimate": {k: round(v * args.cores, 1) for k, v in per_cpu.items()},
        "ratio_to_limit_estimate": {k: round(v / limit, 3) for k, v in per_cpu.items()},
    }))


if __name__ == "__main__":
    main()
