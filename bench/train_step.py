"""Time one policy-gradient update on SmolLM2-135M-Instruct: a naive loop vs pgcore.

Workload (from issue 3): 16 completions of 64 tokens after 32-token prompts (4 prompts x 4
completions, so leave-one-out has groups), PGConfig() defaults for epochs, minibatch size,
clip and KL. Both paths run in this process on the same batch:

(a) naive, as in tutorials: one sequence at a time, fp32, full fine-tuning, full-vocabulary
    log-softmax over every position, the reference recomputed for every sequence in every
    epoch by a second model copy, AdamW over all 135M parameters;
(b) pgcore's default path: ``pgcore.trainer.update`` with ``PGConfig()`` (LoRA, batched
    minibatches, logits only for completion positions, reference = adapter disabled and
    scored once per update, bf16 autocast over fp32 master weights).

Prints ONE JSON object on stdout; a profile table and progress go to stderr. Not a test.
The machine is shared, so each path is timed ``--repeats`` times, interleaved, and the
best time is used (the median is reported too, with the load average); the matmul peak
is the best of several measurements spread over the run.

Usage: python bench/train_step.py [--model-dir DIR] [--repeats 3] [--threads N] [--passive-omp]
       [--no-profile]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# OpenMP threads that spin while waiting turn a busy 2-core machine into a thrash (a
# 2-thread forward+backward: 17-24 s spinning, ~8 s passive, same load), while on a quiet
# one passive waiting costs pgcore ~13%. So passive only on request; it must be set before
# torch starts its thread pool.
if "--passive-omp" in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from pgcore.config import PGConfig  # noqa: E402
from pgcore.logprobs import pack_sequences, sequence_logprobs  # noqa: E402
from pgcore.packaging import convert_gguf_to_hf, smollm2_gguf_path  # noqa: E402
from pgcore.policy import load_policy  # noqa: E402
from pgcore.trainer import TrainBatch, bf16_autocast_active, minibatch_order, update  # noqa: E402

N_PROMPTS, PER_PROMPT, PROMPT_LEN, COMPLETION_LEN = 4, 4, 32, 64
DEFAULT_MODEL_DIR = Path(os.environ.get("PGCORE_SMOLLM2_DIR", "/tmp/smollm2-hf"))


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def load_avg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- workload


def english_text() -> str:
    """Deterministic English prose that ships with Python: standard-library docstrings."""
    import argparse as m1
    import collections as m2
    import json as m3
    import logging as m4
    import pathlib as m5
    import textwrap as m6
    import unittest as m7

    objects = [m1, m1.ArgumentParser, m2, m2.OrderedDict, m3, m4, m4.Logger, m5, m6, m7, m7.TestCase]
    return "\n\n".join(inspect.getdoc(o) or "" for o in objects)


def workload_args(description: str, repeats: int) -> argparse.Namespace:
    """``--repeats``, ``--threads`` and ``--model-dir`` of the scripts that time parts of this workload."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    return p.parse_args()


def workload(args: argparse.Namespace):
    """Set ``args.threads``, load SmolLM2 (LoRA, trainable, ``PGConfig()``) and build this workload's batch."""
    torch.set_num_threads(args.threads)
    model_dir = convert_gguf_to_hf(smollm2_gguf_path(), args.model_dir)
    policy = load_policy(model_dir, config=PGConfig(), trainable=True)
    return policy, build_batch(policy)


@torch.no_grad()
def build_batch(policy, seed: int = 0) -> TrainBatch:
    """16 (prompt, completion) pairs cut from real text; behaviour logprobs scored in fp32."""
    ids = policy.tokenizer(english_text(), add_special_tokens=False)["input_ids"]
    need = N_PROMPTS * (PROMPT_LEN + PER_PROMPT * COMPLETION_LEN)
    while len(ids) < need:
        ids = ids + ids
    prompts, completions, groups = [], [], []
    pos = 0
    for g in range(N_PROMPTS):
        prompt = ids[pos : pos + PROMPT_LEN]
        pos += PROMPT_LEN
        for _ in range(PER_PROMPT):
            prompts.append(prompt)
            completions.append(ids[pos : pos + COMPLETION_LEN])
            groups.append(g)
            pos += COMPLETION_LEN
    packed = pack_sequences(prompts, completions, policy.tokenizer.pad_token_id)
    policy.model.eval()
    behaviour = []
    for start in range(0, len(prompts), 8):
        sl = slice(start, start + 8)
        logprobs, _ = sequence_logprobs(
            policy.model, packed.input_ids[sl], packed.attention_mask[sl], packed.completion_mask[sl]
        )
        behaviour.extend(row[m].tolist() for row, m in zip(logprobs, packed.completion_mask[sl]))
    generator = torch.Generator().manual_seed(seed)
    rewards = (torch.randint(1, 6, (len(prompts),), generator=generator).float() - 3) / 2
    return TrainBatch(prompts, completions, behaviour, rewards.tolist(), groups)


# ---------------------------------------------------------------- (a) the naive loop


class NaiveTrainer:
    """A tutorial-style PPO/REINFORCE step: per-sequence forward, second model as reference."""

    def __init__(self, model_dir: Path, config: PGConfig) -> None:
        from transformers import AutoModelForCausalLM

        self.config = config
        self.policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.ref.requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.lr, weight_decay=0.0)

    def sequence_loss(self, prompt, completion, behaviour, advantage):
        """Token-summed loss terms of one sequence and its token count."""
        ids = torch.tensor([prompt + completion])
        P = len(prompt)
        logits = self.policy(ids).logits[0]  # (T, V), every position
        logp = torch.log_softmax(logits, dim=-1)[P - 1 : -1]  # (C, V)
        lp = logp.gather(1, ids[0, P:, None]).squeeze(1)  # (C,)
        with torch.no_grad():
            ref_logp = torch.log_softmax(self.ref(ids).logits[0], dim=-1)[P - 1 : -1]
        ref_lp = ref_logp.gather(1, ids[0, P:, None]).squeeze(1)
        ratio = torch.exp(lp - torch.tensor(behaviour))
        eps = self.config.clip_eps
        pg = -torch.minimum(ratio * advantage, ratio.clamp(1 - eps, 1 + eps) * advantage)
        d = ref_lp - lp
        kl = torch.exp(d) - d - 1
        return pg.sum(), kl.sum(), len(completion)

    def update(self, batch: TrainBatch) -> dict:
        from pgcore.advantages import leave_one_out

        cfg = self.config
        advantages = leave_one_out(torch.tensor(batch.rewards), torch.tensor(batch.group_ids)).tolist()
        generator = torch.Generator().manual_seed(cfg.seed)
        self.policy.train()
        first_pg = None
        for _epoch in range(cfg.epochs):
            order = minibatch_order(batch.prompt_ids, generator)
            for start in range(0, len(batch), cfg.minibatch_size):
                idx = order[start : start + cfg.minibatch_size]
                n_tokens = sum(len(batch.completion_ids[i]) for i in idx)
                self.optimizer.zero_grad()
                pg_total = 0.0
                for i in idx:
                    pg, kl, _ = self.sequence_loss(
                        batch.prompt_ids[i], batch.completion_ids[i], batch.behaviour_logprobs[i], advantages[i]
                    )
                    ((pg + cfg.kl_coef * kl) / n_tokens).backward()
                    pg_total += float(pg.detach()) / n_tokens
                if first_pg is None:
                    first_pg = pg_total
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
        return {"first_step_pg_loss": first_pg}


# ---------------------------------------------------------------- measurements


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def profile_summary(fn, rows: int = 12) -> tuple[list[dict], dict]:
    """Top ops by self CPU time and a coarse split into families, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    log(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    top = [
        {
            "op": e.key,
            "self_ms": round(e.self_cpu_time_total / 1e3, 1),
            "pct": round(100 * e.self_cpu_time_total / total, 1),
            "calls": e.count,
        }
        for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:rows]
    ]
    families = {
        "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
        "sdpa_attention": ("scaled_dot_product",),  # eager attention's matmuls count as matmul
        "dtype_casts_and_copies": ("aten::copy_", "aten::_to_copy", "aten::to"),
        "softmax_logsumexp_exp": ("softmax", "logsumexp", "aten::exp"),
        "optimizer": ("Optimizer", "adamw", "aten::_foreach"),
    }
    split: dict[str, float] = {k: 0.0 for k in families}
    split["other_elementwise_and_overhead"] = 0.0
    for e in averages:
        for family, keys in families.items():
            if any(k in e.key for k in keys):
                split[family] += e.self_cpu_time_total
                break
        else:
            split["other_elementwise_and_overhead"] += e.self_cpu_time_total
    return top, {k: round(100 * v / total, 1) for k, v in split.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--repeats", type=int, default=3, help="naive updates, each followed by a pgcore one (best is used)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--passive-omp", action="store_true", help="OMP_WAIT_POLICY=PASSIVE: for a machine other jobs share"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, i.e. the cores). On a machine other jobs share, 1 avoids "
        "OpenMP barrier stalls that slow a 2-thread run up to ~10x",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    result: dict = {
        "benchmark": "train_step",
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_avg_start": load_avg(),
    }

    if not (args.model_dir / "config.json").exists():
        log(f"converting SmolLM2 GGUF to {args.model_dir} (once, ~20 s)")
        convert_gguf_to_hf(smollm2_gguf_path(), args.model_dir)

    config = PGConfig()
    result["config"] = config.to_dict()
    result["workload"] = {
        "completions": N_PROMPTS * PER_PROMPT,
        "prompts": N_PROMPTS,
        "prompt_tokens": PROMPT_LEN,
        "completion_tokens": COMPLETION_LEN,
        "epochs": config.epochs,
        "minibatch_size": config.minibatch_size,
    }
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def measure_peaks() -> None:
        peaks["fp32"].append(matmul_peak_gflops(torch.float32))
        peaks["bf16"].append(matmul_peak_gflops(torch.bfloat16))

    measure_peaks()
    policy = load_policy(args.model_dir, config=config, trainable=True)
    batch = build_batch(policy)
    n = len(batch)

    log("pgcore: warm-up and a first timed update")
    first_steps: list[dict] = []
    fresh_metrics = update(policy, batch, config, on_step=first_steps.append)  # fresh samples: ratio ~1
    pgcore_times: list[float] = []
    pgcore_metrics: dict = {}  # of the fastest timed update

    def timed_pgcore_update() -> None:
        nonlocal pgcore_metrics
        t = time.perf_counter()
        metrics = update(policy, batch, config)
        pgcore_times.append(time.perf_counter() - t)
        if pgcore_times[-1] == min(pgcore_times):
            pgcore_metrics = metrics
        log(f"  pgcore update {pgcore_times[-1]:.2f} s (load {load_avg()})")

    timed_pgcore_update()
    result["peak_rss_mb"] = round(rss_mb(), 1)  # the pgcore path alone, model load included

    log("naive: loading two full copies; then naive and pgcore updates interleaved")
    naive = NaiveTrainer(args.model_dir, config)
    naive_times = []
    naive_first_pg = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = naive.update(batch)
        naive_times.append(time.perf_counter() - t)
        naive_first_pg = naive_first_pg if naive_first_pg is not None else out["first_step_pg_loss"]
        log(f"  naive update {naive_times[-1]:.2f} s (load {load_avg()})")
        timed_pgcore_update()
        measure_peaks()
    result["peak_rss_mb_with_naive"] = round(rss_mb(), 1)
    # Other jobs share this machine: the best of several tries is the closest to its real peak.
    result["matmul_peak_gflops_fp32"] = round(max(peaks["fp32"]), 1)
    result["matmul_peak_gflops_bf16"] = round(max(peaks["bf16"]), 1)

    # FLOPs actually executed (aten-level count, forward + backward), one update each.
    pgcore_flops = count_flops(lambda: update(policy, batch, config))
    one = (batch.prompt_ids[0], batch.completion_ids[0], batch.behaviour_logprobs[0], 0.5)
    naive_seq_flops = count_flops(lambda: sum(naive.sequence_loss(*one)[:2]).backward())
    naive_flops = naive_seq_flops * n * config.epochs
    del naive

    best_naive, best_pgcore = min(naive_times), min(pgcore_times)
    bf16 = bf16_autocast_active(config)  # False on CPUs without native bf16 matmuls: pgcore runs fp32 there
    peak = result["matmul_peak_gflops_bf16" if bf16 else "matmul_peak_gflops_fp32"]
    achieved = pgcore_flops / best_pgcore / 1e9
    result.update(
        {
            "naive_samples_per_s": round(n / best_naive, 4),
            "pgcore_samples_per_s": round(n / best_pgcore, 4),
            "speedup": round(best_naive / best_pgcore, 2),
            "naive_update_seconds": [round(t, 2) for t in naive_times],
            "pgcore_update_seconds": [round(t, 2) for t in pgcore_times],
            "speedup_median": round(statistics.median(naive_times) / statistics.median(pgcore_times), 2),
            "matmul_peak_gflops": peak,
            "matmul_peak_dtype": "bf16" if bf16 else "fp32",
            "pgcore_gflop_per_update": round(pgcore_flops / 1e9, 1),
            "naive_gflop_per_update": round(naive_flops / 1e9, 1),
            "pgcore_achieved_gflops": round(achieved, 1),
            "naive_achieved_gflops": round(naive_flops / best_naive / 1e9, 1),
            "mfu": round(achieved / peak, 4),
            "naive_mfu_vs_fp32_peak": round(naive_flops / best_naive / 1e9 / result["matmul_peak_gflops_fp32"], 4),
            # Same base weights, same shuffle: the two first steps should agree (bf16 noise aside).
            "first_step_pg_loss": {"naive": round(naive_first_pg, 5), "pgcore": round(first_steps[0]["losses/pg_loss"], 5)},
            "pgcore_phase_seconds": {
                k.removeprefix("train/seconds_"): round(v, 2)
                for k, v in pgcore_metrics.items()
                if k.startswith("train/seconds_")
            },
            # From the first update (fresh samples); later ones train on the now stale batch.
            "pgcore_metrics": {k: round(v, 5) for k, v in fresh_metrics.items() if not k.startswith("train/")},
        }
    )

    if not args.no_profile:
        log("profiling one pgcore update (torch.profiler, CPU)")
        top, split = profile_summary(lambda: update(policy, batch, config))
        result["profile_top_ops"] = top
        result["profile_split_pct"] = split
    result["load_avg_end"] = load_avg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
