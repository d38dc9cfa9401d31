"""What keeping the reward model's backbone loaded saves per scored batch.

Reward-model scoring (new pool completions, fresh samples of a reward-model run, the
over-optimisation guard's held-out samples) computes features of the project's frozen
base model through :func:`webapp.rewards.services.features_compute`. Before, every call
loaded the base model from disk; now the process keeps it (``webapp.policies.runtime.
frozen_policy``, keyed by the folder's file stamp). For each model folder this times
``--batches`` calls of ``--batch`` completions (``--prompt-tokens`` + ``--completion-tokens``
random token ids, the app's reward-model feature settings) both ways, in one process:

- ``reload``: ``pgcore.policy.load_policy`` + ``completion_features`` per call (the old path);
- ``cached``: ``features_compute`` (the first call loads, later ones reuse).

Needs no database (an unsaved project pointing at the folder). Output: one JSON object.

    .venv/bin/python bench/rm_scoring.py --models tiny var/models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")


def _ms(seconds: list[float]) -> dict:
    return {
        "first_ms": round(1000 * seconds[0], 1),
        "later_median_ms": round(1000 * statistics.median(seconds[1:]), 1) if len(seconds) > 1 else None,
        "total_ms": round(1000 * sum(seconds), 1),
    }


def measure(folder: Path, args) -> dict:
    import torch

    from pgcore.policy import load_policy
    from pgcore.reward_model import completion_features
    from webapp.policies import runtime
    from webapp.policies.models import Project
    from webapp.rewards import services

    project = Project(slug="bench", base_model_path=str(folder))
    config = services.reward_model_config_for(project=project)
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    rng = random.Random(args.seed)
    batches = [
        (
            [[rng.randrange(vocab) for _ in range(args.prompt_tokens)] for _ in range(args.batch)],
            [[rng.randrange(vocab) for _ in range(args.completion_tokens)] for _ in range(args.batch)],
        )
        for _ in range(args.batches)
    ]

    reload_s, reload_out = [], []
    for prompts, completions in batches:
        start = time.perf_counter()
        policy = load_policy(folder)
        reload_out.append(
            completion_features(policy.model, prompts, completions, config, pad_id=policy.tokenizer.pad_token_id or 0)
        )
        del policy
        reload_s.append(time.perf_counter() - start)

    runtime._frozen.clear()  # the cached path starts cold, as a fresh worker does
    cached_s, cached_out = [], []
    for prompts, completions in batches:
        start = time.perf_counter()
        cached_out.append(
            services.features_compute(project=project, prompt_ids=prompts, completion_ids=completions, config=config)
        )
        cached_s.append(time.perf_counter() - start)
    same = all(torch.equal(a, b) for a, b in zip(reload_out, cached_out))
    return {
        "model": str(folder),
        "reload": _ms(reload_s),
        "cached": _ms(cached_s),
        "saved_per_later_batch_ms": round(1000 * (statistics.median(reload_s[1:]) - statistics.median(cached_s[1:])), 1),
        "speedup_total": round(sum(reload_s) / sum(cached_s), 2),
        "identical_features": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "var/models/smollm2-135m-instruct"],
                        help="model folders; 'tiny' writes pgcore's tiny test model")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="completions per call (a pool refill stores a few)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--completion-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import django

    django.setup()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pgcore.tiny import write_tiny_model

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = write_tiny_model(Path(tmp) / "tiny") if name == "tiny" else Path(name)
            results.append(measure(folder, args))
    print(json.dumps({
        "batches": args.batches, "batch": args.batch, "prompt_tokens": args.prompt_tokens,
        "completion_tokens": args.completion_tokens, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "results": results,
    }))


if __name__ == "__main__":
    main()
