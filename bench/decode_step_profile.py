"""torch.profiler (CPU, record_shapes) over decoding steps of pgcore's sampler, grouped by op kind.

Builds this tree's sampling copy of SmolLM2-135M in ``--precision`` (as ``bench/decode_step_ab.py``:
fp32 a fused copy, bf16 :func:`pgcore.rollout.sampling_model`), runs ``--reps`` decoding steps
(``_forward_fast`` for one token per row at ``--batch`` rows over ``--cache-cols`` cache columns,
then a draw with :func:`pgcore.rollout.draw_tokens`) under the profiler, and prints ONE JSON object:
CPU time per step (``time.process_time``, measured outside the profiler), the profiler's self CPU
time per op kind (matmul, attention, norm, rotary, activation, cache write, sampling, other ops)
and the rest of the step (Python and dispatch), and the top ops with their input shapes.

Not a test. Usage: python bench/decode_step_profile.py [--precision fp32] [--batch 32] [--threads 2]
[--reps 10] [--cache-cols 100] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from bench.decode_setup import add_step_arguments, parse_and_load, step_inputs  # noqa: E402
from pgcore import rollout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(p, threads=2)
    args, dtype, _, model = parse_and_load(p)
    b, T = args.batch, args.cache_cols
    caches, ids, g = step_inputs(model, dtype, b, T + 60)
    cols = torch.full((b,), T - 1)
    mask = torch.ones(b, 1, 1, T, dtype=torch.bool)
    out = torch.empty(b, model.lm_head.weight.shape[0])
    scratch = torch.empty_like(out)

    def step():
        with torch.no_grad():
            logits = rollout._forward_fast(model.model, model.lm_head, ids, cols[:, None], mask, *caches, cols, out=out)
            logp = torch.log_softmax(logits, dim=-1)
            return rollout.draw_tokens(logp, g, False, scratch)

    for _ in range(3):
        step()
    cpu = []
    for _ in range(args.reps):
        t = time.process_time()
        step()
        cpu.append(time.process_time() - t)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.reps):
            with record_function("step"):
                step()
    kinds = {
        "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
        "norm": ("aten::pow", "aten::mean", "aten::rsqrt", "aten::rms_norm", "aten::_fused_rms_norm"),
        "activation": ("aten::silu",),
        "softmax": ("aten::_softmax", "aten::_log_softmax"),
        "cache_write": ("aten::index_copy_",),
        "sampling": ("aten::exp", "aten::searchsorted", "aten::cumsum", "aten::sum", "aten::gather", "aten::rand",
                     "aten::uniform_", "aten::minimum", "aten::nextafter", "aten::argmax"),
    }
    by_kind = defaultdict(float)
    step_total = 0.0
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == "step":
            step_total = e.cpu_time_total
            continue
        kind = next((k for k, names in kinds.items() if e.key in names), "other_ops")
        by_kind[kind] += e.self_cpu_time_total
        rows.append((e.self_cpu_time_total, e.key, str(e.input_shapes)[:120], e.count))
    ops_total = sum(by_kind.values())
    rows.sort(reverse=True)
    n = args.reps
    print(json.dumps({
        "precision": args.precision, "batch": b, "threads": args.threads, "steps": n, "cache_cols": T,
        "cpu_ms_per_step_median": round(sorted(cpu)[n // 2] * 1000, 2),
        "profiled_wall_ms_per_step": round(step_total / n / 1000, 2),
        "self_ms_per_step_by_kind": {k: round(v / n / 1000, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "python_and_dispatch_ms_per_step": round((step_total - ops_total) / n / 1000, 2),
        "top_ops": [{"op": k, "shapes": s, "calls_per_step": c // n, "self_ms_per_step": round(t / n / 1000, 3)}
                    for t, k, s, c in rows[:15]],
    }, indent=1))


if __name__ == "__main__":
    main()
