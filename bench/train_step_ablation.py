"""What each of pgcore's two newest speed-ups buys: one update with and without them.

Times ``pgcore.trainer.update`` on the ``bench/train_step.py`` workload (SmolLM2-135M, 4
prompts x 4 completions of 64 tokens after 32-token prompts, ``PGConfig()``) in four
variants, interleaved ``--repeats`` times in one process, best time kept:

- ``all``: the default path;
- ``no_share``: ``share_prompts=False`` (each prompt run once per completion);
- ``no_bf16_weights``: frozen weights left fp32 (autocast re-casts them every forward);
- ``neither``.

Prints ONE JSON object: seconds per update of each variant and their ratios to ``all``.
Not a test. Usage: python bench/train_step_ablation.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import pgcore.trainer as trainer  # noqa: E402
from pgcore.config import PGConfig  # noqa: E402
from train_step import load_avg, workload, workload_args  # noqa: E402

VARIANTS = {"all": (True, True), "no_share": (False, True), "no_bf16_weights": (True, False), "neither": (False, False)}


def main() -> None:
    args = workload_args(__doc__.splitlines()[0], repeats=3)
    policy, batch = workload(args)
    with_bf16_weights = trainer.frozen_weights_in_bf16
    trainer.update(policy, batch, PGConfig())  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    load_start = load_avg()
    for _ in range(args.repeats):
        for name, (share, bf16_weights) in VARIANTS.items():
            trainer.frozen_weights_in_bf16 = with_bf16_weights if bf16_weights else (lambda _p: contextlib.nullcontext())
            started = time.perf_counter()
            trainer.update(policy, batch, PGConfig(share_prompts=share))
            seconds[name].append(time.perf_counter() - started)
            print(f"  {name}: {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
    trainer.frozen_weights_in_bf16 = with_bf16_weights
    best = {name: min(values) for name, values in seconds.items()}
    print(
        json.dumps(
            {
                "benchmark": "train_step_ablation",
                "threads": args.threads,
                "load_avg_start": load_start,
                "load_avg_end": load_avg(),
                "seconds_per_update_best": {k: round(v, 2) for k, v in best.items()},
                "seconds_per_update_all": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
                "ratio_to_all": {k: round(v / best["all"], 3) for k, v in best.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
