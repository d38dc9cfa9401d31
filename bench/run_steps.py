"""CPU seconds of each step of a first training run ("Train now" on 16 ratings), in this process.

Sets up, once per ``--setup-dir``, the demo project as ``make run`` does (SmolLM2 as
version 0, the VADER review prompts with 64 held out, version 0 evaluated on the held-out
prompts as the training worker does at start-up), samples one pool batch from version 0
and rates ``--ratings`` completions (VADER sentiment of the text, as ``bench/loop_timing.py``
does). Each measurement copies that set-up to a fresh folder and runs the run's steps
(batch, update, save, evaluate, promote; :mod:`webapp.training.pipeline`) one after the
other with :func:`webapp.training.services.training_step_run`, as the training worker runs
them, with the torch threads that worker would use (``--threads``, default its share:
:func:`webapp.worker_threads.torch_threads_per_child`). Per step it reports the process's
CPU seconds (``time.process_time``: every thread of this process, so meaningful on a shared
machine) and wall seconds. The run's process first does, untimed, what the worker's did
at start-up (loads version 0 and samples, so imports are done); ``--cold`` skips that.
``--profile update,evaluate`` writes cProfile's top functions of those steps (by cumulative
CPU time) to stderr. ``--repo`` runs another checkout's app code (the same
set-up, so old and new code can be alternated on one database state). Prints one JSON object.

    .venv/bin/python bench/run_steps.py --setup-dir /tmp/run-steps --repeats 1
    .venv/bin/python bench/run_steps.py --setup-dir /tmp/run-steps --repo ../base   # main, same set-up

The promote step includes sampling the new version's first pool batch ahead when the
checkout does that in the promote step; its seconds are reported apart (``ahead_*``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _timed(fn, *, profile: bool):
    """``(result, cpu_s, wall_s, profile text or None)`` of ``fn()``."""
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU seconds, as the steps
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        result = fn()
    finally:
        if profiler:
            profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    text = None
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        text = out.getvalue()
    return result, round(cpu, 2), round(wall, 2), text


def _setup(*, ratings: int, vader_sdist: Path) -> dict:
    """Build the demo project's state just before "Train now"; returns what it cost."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from django.contrib.auth import get_user_model

    from webapp.annotation.importers import demo_prompts_from_vader_sdist
    from webapp.annotation.models import Completion
    from webapp.annotation.services import completion_pool_refill, prompts_create, rating_create
    from webapp.policies.models import Membership
    from webapp.policies.services import base_model_ensure, membership_add, project_create
    from webapp.training import evaluation

    project = project_create(slug="demo", title="Run steps bench", base_model_path=base_model_ensure())
    prompts_create(project=project, rows=demo_prompts_from_vader_sdist(vader_sdist))
    annotator = get_user_model().objects.create_user(username="annotator1", password="x")
    membership_add(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    _, eval_cpu, eval_wall, _ = _timed(lambda: evaluation.version_evaluate(version=project.served_version), profile=False)
    _, pool_cpu, pool_wall, _ = _timed(lambda: completion_pool_refill(project=project, max_new=ratings, seed=0), profile=False)
    vader = SentimentIntensityAnalyzer()
    completions = list(Completion.objects.filter(project=project).order_by("pk")[:ratings])
    if len(completions) < ratings:
        raise SystemExit(f"the pool gave {len(completions)} completions, fewer than --ratings {ratings}")
    for completion in completions:
        compound = vader.polarity_scores(completion.text)["compound"]
        rating_create(annotator=annotator, completion=completion, score=min(5, max(1, round(3 + 2 * compound))))
    return {"v0_evaluate_cpu_s": eval_cpu, "v0_evaluate_wall_s": eval_wall, "pool_cpu_s": pool_cpu, "pool_wall_s": pool_wall}


def _run_once(*, profile_steps: set[str]) -> dict:
    """Start a run on the project's unused ratings ("Train now") and run its steps here, timed."""
    from webapp.policies.models import Project
    from webapp.training import services
    from webapp.training.models import STEP_ORDER, TrainingRun

    project = Project.objects.get(slug="demo")
    run = services.training_run_create(project=project, trigger=TrainingRun.Trigger.MANUAL)
    steps, profiles = {}, {}
    ahead = _ahead_timer()
    for step in STEP_ORDER:
        ahead["cpu"] = ahead["wall"] = 0.0
        nxt, cpu, wall, text = _timed(
            lambda: services.training_step_run(run_id=run.pk, step=step, worker="bench", chain=False),
            profile=step in profile_steps,
        )
        steps[step] = {"cpu_s": cpu, "wall_s": wall}
        if ahead["wall"]:
            steps[step].update(ahead_cpu_s=round(ahead["cpu"], 2), ahead_wall_s=round(ahead["wall"], 2))
        if text:
            profiles[step] = text
        if nxt is None and step != STEP_ORDER[-1]:
            break
    run.refresh_from_db()
    version = run.result_version
    return {
        "status": run.status,
        "promoted": run.promoted,
        "held_back_reason": run.held_back_reason,
        "error": run.error,
        "version": version.number if version else None,
        "kl_to_base": version.kl_to_base if version else None,
        "distinct2": version.distinct2 if version else None,
        "metrics_train_seconds": {k: round(v, 2) for k, v in (run.metrics or {}).items() if k.startswith("train/seconds")},
        "steps": steps,
        "total_cpu_s": round(sum(s["cpu_s"] for s in steps.values()), 2),
        "total_wall_s": round(sum(s["wall_s"] for s in steps.values()), 2),
        "profiles": profiles,
    }


def _ahead_timer() -> dict:
    """Time ``completions_sample_ahead`` wherever the checkout calls it from (counted in its step)."""
    from webapp.annotation import services as annotation_services

    acc = {"cpu": 0.0, "wall": 0.0}
    original = getattr(annotation_services, "completions_sample_ahead", None)
    if original is None or getattr(original, "_bench_wrapped", False):
        return acc

    def wrapped(**kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return original(**kwargs)
        finally:
            acc["cpu"] += time.process_time() - cpu
            acc["wall"] += time.perf_counter() - wall

    wrapped._bench_wrapped = True
    annotation_services.completions_sample_ahead = wrapped
    return acc


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup-dir", required=True, help="folder holding the set-up (built on first use, then reused)")
    parser.add_argument("--repo", default=str(HERE.parent), help="checkout whose app code runs the steps")
    parser.add_argument("--models-dir", default=None, help="folder with smollm2-135m-instruct (default: <repo>/var/models)")
    parser.add_argument("--ratings", type=int, default=16, help="ratings in the run (the app's default trigger: 16)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the training worker's share)")
    parser.add_argument("--repeats", type=int, default=1, help="runs, each on a fresh copy of the set-up")
    parser.add_argument(
        "--cold", action="store_true",
        help="start the run in a fresh process (default: first do untimed what the worker did at start-up)",
    )
    parser.add_argument("--profile", default="", help="comma-separated steps to profile (e.g. update,evaluate)")
    args = parser.parse_args(argv)

    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    setup_dir = Path(args.setup_dir).resolve()
    base_models = Path(args.models_dir or repo / "var/models").resolve()
    ready = setup_dir / "READY"
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    setup_cost = None
    if not ready.exists():
        shutil.rmtree(setup_dir, ignore_errors=True)
        (setup_dir / "models").mkdir(parents=True)
        (setup_dir / "models" / "smollm2-135m-instruct").symlink_to(base_models / "smollm2-135m-instruct")
        setup_cost = _in_child(setup_dir, repo, ["setup", str(args.ratings), str(repo / "var/downloads/vaderSentiment-3.3.2.tar.gz")])
        ready.write_text(json.dumps(setup_cost))
    runs = []
    for _ in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="run-steps-"))
        try:
            shutil.copytree(setup_dir, work / "d", symlinks=True)
            runs.append(_in_child(work / "d", repo, ["run", str(args.threads), args.profile, "cold" if args.cold else "warm"]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "bench": "run_steps",
        "repo": str(repo),
        "commit": os.popen(f"git -C {repo} rev-parse --short HEAD").read().strip(),
        "setup": json.loads(ready.read_text()),
        "runs": runs,
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=1))
    return result


def _in_child(data_dir: Path, repo: Path, job: list[str]) -> dict:
    """Run ``job`` in a fresh Python process on Django with its data in ``data_dir`` (one app import per measurement)."""
    import subprocess

    from django_env import throwaway_env  # bench/'s own (this script's folder), whichever --repo runs

    env = throwaway_env(
        data_dir, models_dir=data_dir / "models", broker=None,
        DJANGO_SETTINGS_MODULE="webapp.settings",
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        PYTHONPATH=str(repo),
    )
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *job], cwd=repo, env=env, check=True,
        stdout=subprocess.PIPE, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _warm_up() -> None:
    """What the training worker's process did before "Train now": it evaluated version 0 at start-up
    (:mod:`webapp.training.signals`), so its imports are done and it has loaded the base model once."""
    from pgcore.rollout import generate
    from webapp.policies.models import Project
    from webapp.policies.runtime import policy_load

    policy = policy_load(Project.objects.get(slug="demo").served_version, trainable=False)
    generate(policy, ["Hello"], max_new_tokens=2, seed=0)


def _child(job: list[str]) -> None:
    import django

    django.setup()
    import torch
    from django.conf import settings
    from django.core.management import call_command

    if job[0] == "setup":
        call_command("migrate", verbosity=0)
        torch.set_num_threads(os.cpu_count() or 1)
        print(json.dumps(_setup(ratings=int(job[1]), vader_sdist=Path(job[2]))))
        return
    from webapp.worker_threads import torch_threads_per_child, usable_cores

    threads = int(job[1]) or torch_threads_per_child(
        usable_cores=usable_cores(), concurrency=1, pools=settings.REWARDLOOP_WORKER_POOLS,
        requested=settings.REWARDLOOP_TORCH_THREADS,
    )
    torch.set_num_threads(threads)
    if job[3] != "cold":
        _warm_up()
    result = _run_once(profile_steps={s for s in job[2].split(",") if s})
    result["threads"] = torch.get_num_threads()
    result["worker"] = job[3]
    for step, text in result.pop("profiles").items():
        sys.stderr.write(f"==== profile of the {step} step ====\n{text}\n")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    else:
        main()
