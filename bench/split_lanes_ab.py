"""CPU time and wall time of pgcore's sampler with the batch split into CPU lanes vs one batch, alternated.

On SmolLM2-135M-Instruct, for each ``PRECISION:BATCH`` given: ``pgcore.rollout.generate`` of
``BATCH`` prompts of ``bench/generate.py`` for ``--new-tokens`` at ``lanes=1`` (one batch at
torch's threads, the app's default) and then at ``lanes=--lanes`` (``pgcore.rollout.sample_split``:
one thread per lane), printing one JSON line per run: generated tokens (to the first EOS), wall
seconds, CPU seconds of the process (``time.process_time``, all threads), tokens per wall and per
CPU second, the load average before and after. ``--one-lane-threads 1`` runs the ``lanes=1``
arm at one thread (a lane's cost alone, no other lane beside it). Not a test.

Usage: python bench/split_lanes_ab.py [--new-tokens 16] [--lanes 2] [--one-lane-threads N] [--model-dir DIR] fp32:64 bf16:64 ...
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

from bench.generate import count_tokens, prompts  # noqa: E402
from pgcore.policy import load_policy  # noqa: E402
from pgcore.rollout import eos_token_ids, generate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("settings", nargs="+", help="PRECISION:BATCH, e.g. fp32:64")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--lanes", type=int, default=2)
    p.add_argument("--one-lane-threads", type=int, default=torch.get_num_threads())
    p.add_argument("--model-dir", type=Path, default=Path("var/models/smollm2-135m-instruct"))
    args = p.parse_args()
    threads = torch.get_num_threads()
    policy = load_policy(args.model_dir)
    eos = eos_token_ids(policy)
    for precision in sorted({s.split(":")[0] for s in args.settings}):  # warm-up: the sampling copy, first allocations
        generate(policy, prompts(4), max_new_tokens=2, seed=0, batch_size=4, precision=precision, lanes=1)
    for setting in args.settings:
        precision, batch = setting.split(":")
        texts = prompts(int(batch))
        for lanes in (1, args.lanes):
            torch.set_num_threads(args.one_lane_threads if lanes == 1 else threads)
            load = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            rows = generate(
                policy, texts, max_new_tokens=args.new_tokens, seed=0, batch_size=len(texts), precision=precision, lanes=lanes
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            n = count_tokens([r.completion_ids for r in rows], eos)
            print(json.dumps({
                "precision": precision, "batch": len(texts), "lanes": lanes, "threads": torch.get_num_threads(),
                "tokens": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "tok_s": round(n / wall, 1),
                "tok_per_cpu_s": round(n / cpu, 1), "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            }), flush=True)
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
