"""Resident memory of a real generation worker child over many pool refills, some failing.

    python bench/worker_rss.py [--tasks 200] [--fail-every 4] [--hidden 512] [--layers 8]
                               [--variants none,tasks:50,memory:MiB]

For each variant it starts ``celery -A webapp worker -c 1`` (its own SQLite database in a
temporary data directory; ``--broker``, Redis by default), queues ``--tasks`` real pool refills
(``webapp.annotation.services.completion_pool_refill`` on an emptied pool, so each one
samples ``pool_target`` completions), every ``--fail-every``-th of which fails in the
middle of sampling (a forward hook raises on the model's sixth forward pass, with the
batch's activations alive in the traceback). Each task first records the RSS of the child
it runs in, i.e. what the previous tasks left behind.

Variants: ``none`` (no recycling: ``REWARDLOOP_WORKER_MAX_TASKS_PER_CHILD=0`` and
``..._MAX_MEMORY_PER_CHILD_MB=0``), ``tasks:N`` (``--max-tasks-per-child N``),
``memory:M`` (``--max-memory-per-child`` M MiB), ``default`` (the settings' defaults).
The model is a random Llama of the tiny byte tokenizer's vocabulary with the given width
and depth (no weights from anywhere). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import shared_task

REPO = Path(__file__).resolve().parents[1]
QUEUE = "rss-bench"


def _rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@shared_task(name="bench.worker_rss.refill")
def refill(project_id: int, index: int, fail: bool, out: str) -> None:
    """One pool refill in the worker child; records the child's RSS before it starts."""
    with open(out, "a") as f:
        f.write(json.dumps({"i": index, "pid": os.getpid(), "rss_kib": _rss_kib()}) + "\n")
    if index < 0:
        return  # the final probe only measures
    from webapp.annotation.models import Completion
    from webapp.annotation.services import completion_pool_refill
    from webapp.policies.models import Project
    from webapp.policies.runtime import policy_for_generation

    project = Project.objects.get(pk=project_id)
    Completion.objects.filter(project=project).delete()
    if not fail:
        completion_pool_refill(project=project)
        return
    from pgcore.rollout import default_device, sampling_dtype, sampling_model

    # The module that samples: the policy's own model, or its cached copy in the sampling dtype
    # (what completion_pool_refill's default precision and device pick), so the hook is on it.
    sampler = sampling_model(policy_for_generation(project.served_version), dtype=sampling_dtype("auto", default_device()))
    calls = itertools.count()

    def explode(module, args, output):
        if next(calls) == 5:
            raise RuntimeError("bench: sampling failed mid-batch")

    # On the input embedding, which every forward (prefill and each decoding step) calls: the
    # decoding steps call the layers directly, never the model's own forward.
    handle = sampler.get_input_embeddings().register_forward_hook(explode)
    try:
        completion_pool_refill(project=project)
    finally:
        handle.remove()


def write_model(out_dir: Path, *, hidden: int, layers: int) -> Path:
    """A random Llama on the tiny byte tokenizer (:func:`pgcore.tiny.write_tiny_model`), ``hidden`` wide and
    ``layers`` deep, 8 heads (4 KV heads), MLP 3 x ``hidden``, transformers' default initialisation."""
    from pgcore.tiny import write_tiny_model

    return write_tiny_model(
        out_dir, seed=0, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=4, initializer_range=0.02,
    )


def setup(data_dir: Path, args) -> int:
    """Migrate a fresh SQLite database in ``data_dir`` and create the project; returns its id."""
    from bench.django_env import django_start

    django_start(data_dir, models_dir=data_dir / "models", broker=args.broker or None)
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.services import prompts_create
    from webapp.policies.services import project_create

    model_dir = write_model(data_dir / "base", hidden=args.hidden, layers=args.layers)
    project = project_create(
        slug="rss",
        title="RSS bench",
        base_model_path=model_dir,
        pool_target=args.pool_target,
        completions_per_prompt=1,
        max_new_tokens=args.max_new_tokens,
    )
    prompts_create(
        project=project,
        rows=[PromptRow(line=i + 1, text=f"Continue this review: film number {i} was") for i in range(64)],
    )
    return project.pk


def run_variant(name: str, project_id: int, data_dir: Path, args) -> dict:
    from webapp.celery import app

    env = dict(os.environ, PYTHONUNBUFFERED="1", REWARDLOOP_TORCH_THREADS=str(args.threads))
    extra = []
    if name == "none":
        env.update(REWARDLOOP_WORKER_MAX_TASKS_PER_CHILD="0", REWARDLOOP_WORKER_MAX_MEMORY_PER_CHILD_MB="0")
    elif name.startswith("tasks:"):
        extra = ["--max-tasks-per-child", name.split(":")[1]]
    elif name.startswith("memory:"):
        extra = ["--max-memory-per-child", str(int(name.split(":")[1]) * 1024)]
    out = data_dir / f"rss-{name.replace(':', '-')}.jsonl"
    log = data_dir / f"worker-{name.replace(':', '-')}.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", QUEUE, "-c", "1", "--purge",
         "--include", "bench.worker_rss", "-n", f"rss-{time.monotonic_ns()}@%h", "--loglevel", "INFO", *extra],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    started = time.monotonic()
    try:
        while "ready." not in log.read_text(errors="replace"):  # --purge is done: nothing sent is lost
            if worker.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        for i in range(args.tasks):
            fail = args.fail_every > 0 and i % args.fail_every == args.fail_every - 1
            app.send_task("bench.worker_rss.refill", args=[project_id, i, fail, str(out)], queue=QUEUE)
        app.send_task("bench.worker_rss.refill", args=[project_id, -1, False, str(out)], queue=QUEUE)
        deadline = time.monotonic() + args.timeout_s
        rows = []
        while time.monotonic() < deadline:
            rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
            if any(r["i"] == -1 for r in rows):
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        else:
            raise RuntimeError(f"timed out after {len(rows)} tasks:\n{log.read_text()[-3000:]}")
    finally:
        from bench.django_env import stop_group

        stop_group(worker, timeout=30)
    seconds = time.monotonic() - started
    by_index = {r["i"]: r for r in rows}
    final = by_index[-1]
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    checkpoints = {f"before_task_{k}": mib(by_index[k]["rss_kib"]) for k in (1, 10, 50, 100, 150) if k in by_index}
    return {
        "rss_mib": {**checkpoints, f"after_{args.tasks}": mib(final["rss_kib"])},
        "max_rss_mib": mib(max(r["rss_kib"] for r in rows)),
        # null below 11 tasks: task 10 is where the first tasks' one-off allocations are over
        "growth_mib_task_10_to_end": round(mib(final["rss_kib"]) - mib(by_index[10]["rss_kib"]), 1)
        if 10 in by_index else None,
        "children": len({r["pid"] for r in rows}),
        "failed_tasks": log.read_text().count("raised unexpected: RuntimeError('bench: sampling failed mid-batch')"),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--fail-every", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--pool-target", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="none,tasks:50,default")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument(
        "--broker", default="redis://127.0.0.1:6379/3",
        help="Celery broker URL ('' for the embedded filesystem broker, which polls every 0.1 s)",
    )  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="worker-rss-") as tmp:
        data_dir = Path(tmp)
        project_id = setup(data_dir, args)
        from django.conf import settings

        result = {
            "tasks": args.tasks,
            "failing": sum(1 for i in range(args.tasks) if args.fail_every and i % args.fail_every == args.fail_every - 1),
            "model": {"hidden": args.hidden, "layers": args.layers, "max_new_tokens": args.max_new_tokens,
                      "pool_target": args.pool_target},
            "defaults": {"max_tasks_per_child": settings.CELERY_WORKER_MAX_TASKS_PER_CHILD,
                         "max_memory_per_child_kib": settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD},
            "variants": {name: run_variant(name, project_id, data_dir, args) for name in args.variants.split(",")},
        }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
