"""Is bf16 autocast worth it on this CPU? One minibatch of the update in fp32 and in bf16.

pgcore trains under bf16 autocast only where the CPU multiplies bf16 natively
(``pgcore.trainer.native_bf16_matmul``: AVX512_BF16 or AMX on x86). This
measures why: the forward and backward of one minibatch of the ``bench/train_step.py``
workload (SmolLM2-135M LoRA, 8 completions of 64 tokens after 2 prompts of 32 tokens,
``PGConfig()`` otherwise), once in fp32 and once forced under bf16 autocast with the
frozen weights held in bf16, as pgcore would run it on a CPU with native bf16. Each is
timed ``--repeats`` times after a warm-up, best kept. Without native bf16 a bf16 pass can
take minutes.

Prints ONE JSON object: the CPU's answer, seconds per minibatch of each, and the ratio.
Not a test. Usage: python bench/bf16_fallback.py [--repeats 1] [--threads N]
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
from pgcore.logprobs import score_completions  # noqa: E402
from train_step import load_avg, log, workload, workload_args  # noqa: E402

MINIBATCH = 8


def minibatch_seconds(policy, batch, bf16: bool) -> float:
    """Seconds for one forward and backward of the first ``MINIBATCH`` completions."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    weights = trainer.frozen_weights_in_bf16(policy) if bf16 else contextlib.nullcontext()
    idx = trainer.minibatch_order(batch.prompt_ids)[:MINIBATCH]
    pad_id = policy.tokenizer.pad_token_id
    policy.model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with weights, autocast:
        logprobs, _, mask = score_completions(
            policy.model,
            [batch.prompt_ids[i] for i in idx],
            [batch.completion_ids[i] for i in idx],
            pad_id,
        )
        loss = -(logprobs * mask).sum() / mask.sum()
    loss.backward()
    return time.perf_counter() - started


def main() -> None:
    args = workload_args(__doc__.splitlines()[0], repeats=1)
    policy, batch = workload(args)
    load_start = load_avg()
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for name in seconds:
        minibatch_seconds(policy, batch, bf16=name == "bf16")  # warm-up
        for _ in range(args.repeats):
            seconds[name].append(minibatch_seconds(policy, batch, bf16=name == "bf16"))
            log(f"  {name}: {seconds[name][-1]:.2f} s")
    best = {k: min(v) for k, v in seconds.items()}
    print(
        json.dumps(
            {
                "benchmark": "bf16_fallback",
                "native_bf16_matmul": trainer.native_bf16_matmul(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "pgcore_trains_in": "bf16 autocast" if trainer.bf16_autocast_active(PGConfig()) else "fp32",
                "threads": args.threads,
                "load_avg_start": load_start,
                "load_avg_end": load_avg(),
                "seconds_per_minibatch_best": {k: round(v, 2) for k, v in best.items()},
                "seconds_per_minibatch_all": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
                "bf16_over_fp32": round(best["bf16"] / best["fp32"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
