"""Does ``torch.compile`` of pgcore's decoding step pay on this CPU? Compile time and CPU time per step.

Builds the fused fp32 (or bf16) sampling copy of SmolLM2-135M as ``bench/decode_step_ab.py`` does,
compiles :func:`pgcore.rollout._forward_fast` (inductor, ``dynamic=True`` so the growing cache
width does not recompile each step), and reports: CPU and wall seconds of the first compiled call
(the compile; its C++ is built in worker processes, so the wall time is the measure that counts,
with the CPU time of this process and of its reaped children beside it), of a call at a second cache width (a recompile, if any), then eager and compiled
steps alternated ``--reps`` times at cache widths ``--cache-cols + r`` (CPU time per step,
``time.process_time``), the largest logit difference, and how many steps of the median saving
repay the compile (``break_even_steps``).

Prints ONE JSON object. Not a test. Usage: python bench/decode_step_compile.py [--precision fp32]
[--batch 8] [--threads 1] [--reps 10] [--cache-cols 100] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
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
    add_step_arguments(p, batch=8)
    args, dtype, _, model = parse_and_load(p)
    b, T0 = args.batch, args.cache_cols
    caches, ids, _ = step_inputs(model, dtype, b, T0 + args.reps + 10)
    out = torch.empty(b, model.lm_head.weight.shape[0])
    compiled = torch.compile(rollout._forward_fast, dynamic=True)

    def step(fn, T):
        cols = torch.full((b,), T - 1)
        mask = torch.ones(b, 1, 1, T, dtype=torch.bool)
        with torch.no_grad():
            return fn(model.model, model.lm_head, ids, cols[:, None], mask, *caches, cols, out=out).clone()

    timed = {}
    for name, T in (("compile", T0), ("second_width", T0 + 1)):
        c, w, kids = time.process_time(), time.perf_counter(), os.times()
        step(compiled, T)
        kids_s = sum(os.times()[2:4]) - sum(kids[2:4])
        timed[name] = {"cpu_s": round(time.process_time() - c, 2), "children_cpu_s": round(kids_s, 2), "wall_s": round(time.perf_counter() - w, 2)}
    diff = (step(compiled, T0) - step(rollout._forward_fast, T0)).abs().max().item()
    cpu = {"eager": [], "compiled": []}
    for r in range(args.reps):
        for name in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            fn = rollout._forward_fast if name == "eager" else compiled
            t = time.process_time()
            step(fn, T0 + r)
            cpu[name].append(time.process_time() - t)
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in cpu.items()}
    saving = med["eager"] - med["compiled"]
    print(json.dumps({
        "precision": args.precision, "batch": b, "threads": args.threads, "reps": args.reps, "cache_cols": T0,
        "load_avg": os.getloadavg()[0], "torch": torch.__version__, **timed, "max_logit_diff": diff,
        "eager_cpu_ms_median": round(med["eager"], 2), "compiled_cpu_ms_median": round(med["compiled"], 2),
        "compiled_over_eager": round(med["compiled"] / med["eager"], 3),
        "break_even_steps": round(timed["compile"]["wall_s"] * 1000 / saving) if saving > 0 else None,
    }))


if __name__ == "__main__":
    main()
