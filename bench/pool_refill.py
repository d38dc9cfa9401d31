"""How fast the completion pool fills: time to the first rateable item and to the whole deficit.

Runs ``webapp.annotation.services.completion_pool_refill`` in this process on a fresh
SQLite database in a temporary data directory, for a Likert project on SmolLM2 (from
``--models-dir``; ``--tiny`` for the random tiny model), with ``--prompts`` distinct
review prompts and ``--pool`` as the pool target, so one refill samples the whole pool.
Reads each stored completion's ``created_at`` back. Repeats ``--repeats`` times on fresh
projects (seeds 0, 1, ...) and prints one JSON object: per repeat, seconds to the first
stored item, seconds to the whole pool, completion tokens per second, and the medians.

    .venv/bin/python bench/pool_refill.py --models-dir var/models --pool 32 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=os.environ.get("REWARDLOOP_MODELS_DIR", str(REPO / "var/models")))
    parser.add_argument("--tiny", action="store_true", help="the random tiny model instead of SmolLM2")
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from bench.django_env import django_start

    data = tempfile.mkdtemp(prefix="pool-refill-")
    django_start(data, models_dir=Path(args.models_dir).resolve(), migrate=False)
    import torch
    from django.core.management import call_command

    torch.set_num_threads(args.threads)
    call_command("migrate", verbosity=0)
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.models import Completion
    from webapp.annotation.services import completion_pool_refill, prompts_create
    from webapp.policies.services import base_model_ensure, project_create

    if args.tiny:
        from pgcore.tiny import write_tiny_model

        base = write_tiny_model(Path(data) / "tiny-model")
    else:
        base = base_model_ensure()
    runs = []
    for seed in range(args.repeats):
        project = project_create(
            slug=f"bench-{seed}", title="Pool refill bench", base_model_path=base,
            pool_target=args.pool, max_new_tokens=args.max_new_tokens,
        )
        rows = [
            PromptRow(line=i + 1, text=f"Write one sentence reviewing film number {i} (seed {seed}).")
            for i in range(args.prompts)
        ]
        prompts_create(project=project, rows=rows)
        from webapp.policies.runtime import policy_for_generation

        policy_for_generation(project.served_version)  # loaded once, as a warm generation worker has it
        started = time.time()
        created = completion_pool_refill(project=project, seed=seed)
        total = time.time() - started
        stamps = sorted(c.timestamp() for c in Completion.objects.filter(project=project).values_list("created_at", flat=True))
        tokens = sum(len(t) for t in Completion.objects.filter(project=project).values_list("token_ids", flat=True))
        runs.append(
            {
                "seed": seed,
                "created": created,
                "first_item_s": round(stamps[0] - started, 3),
                "pool_s": round(total, 3),
                "completion_tokens": tokens,
                "tokens_per_s": round(tokens / total, 1),
            }
        )
    result = {
        "bench": "pool_refill",
        "model": "tiny" if args.tiny else "smollm2-135m-instruct",
        "pool": args.pool,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "runs": runs,
        "median_first_item_s": statistics.median(r["first_item_s"] for r in runs),
        "median_pool_s": statistics.median(r["pool_s"] for r in runs),
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
