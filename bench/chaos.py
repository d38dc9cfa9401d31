"""Chaos: kill the training worker at update, save and evaluation; stop the broker during ratings.

Starts its own world in a temporary data directory: a private ``redis-server``
on a free port as the broker (never the shared one on 6379), SQLite (or
``--database-url``), a tiny random model (``--model-dir`` for a real one),
gunicorn, a training worker, a generation worker and beat. Then:

1. For each stage (updating, saving, evaluating): staff press Train now over
   HTTP; the run is held at that stage (``REWARDLOOP_CHAOS_PAUSE``, so the kill
   lands there), its pool process gets SIGKILL, and the bench times how long
   until the run is failed.
2. The broker is stopped while two annotators rate over HTTP and staff press
   Train now; then it is started again and the bench times how long until the
   queued run reaches a worker and ends.
3. A second generation worker starts, the served version's unrated completions
   are deleted, and several pool refills are sent at once: the bench reports the
   pool's overshoot past its target (allowed: one prompt group) and prompts
   sampled more than one group's worth for the version.

Prints one JSON object: runs stuck, seconds from kill to failed per stage,
versions wrongly served, ratings lost, pool overshoot, and whether the goal (0
lost, 0 wrongly served, 0 stuck, every lost run failed within 60 s, overshoot
within one group, no prompt sampled twice for a version) was met.

    .venv/bin/python bench/chaos.py
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from django_env import stop_group, throwaway_env  # noqa: E402
from loop_timing import PASSWORD, Session, card, wait  # noqa: E402

SLUG = "demo"  # loop_timing.card reads /p/demo/
STAGES = ("updating", "saving", "evaluating")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class World:
    """The processes the bench starts, each in its own session so it can be killed with its children."""

    def __init__(self, data_dir: Path, env: dict):
        self.data_dir = data_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.data_dir / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(
            argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def celery(self, name: str, *args: str) -> None:
        self.start(name, [sys.executable, "-m", "celery", "-A", "webapp", *args])

    def log_has(self, name: str, text: str) -> bool:
        return text in (self.data_dir / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        stop_group(proc, timeout=15)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a local Hugging Face causal-LM folder (default: a tiny random model)")
    parser.add_argument("--database-url", help="default: SQLite in the temporary data directory")
    parser.add_argument("--stage-pause", type=float, default=120, help="seconds a run is held at the stage to kill")
    parser.add_argument("--ratings-while-down", type=int, default=10, help="ratings per annotator with the broker down")
    parser.add_argument("--lost-within", type=float, default=60, help="the goal: seconds from kill to failed")
    parser.add_argument("--refill-tasks", type=int, default=6, help="pool refills sent at once to two generation workers")
    parser.add_argument("--refill-seconds", type=float, default=180, help="longest wait for the pool to settle")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs) afterwards")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="rl-chaos-"))
    redis_port, web_port = free_port(), free_port()
    pause = data_dir / "chaos-pause"
    pause.write_text("")
    env = throwaway_env(
        data_dir,
        models_dir=data_dir / "models",
        broker=f"redis://127.0.0.1:{redis_port}/0",
        DJANGO_SETTINGS_MODULE="webapp.settings",
        REWARDLOOP_TORCH_THREADS="1",
        REWARDLOOP_CHAOS_PAUSE=str(pause),
        PYTHONUNBUFFERED="1",
        **({"DATABASE_URL": args.database_url} if args.database_url else {}),
    )
    env.pop("REWARDLOOP_CACHE_URL", None)  # the app's own cache, not a shared one
    os.environ.clear()
    os.environ.update(env)
    world = World(data_dir, env)
    result: dict = {"data_dir": str(data_dir), "broker": env["CELERY_BROKER_URL"], "database": args.database_url or "sqlite"}
    redis_argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    try:
        world.start("redis", redis_argv)
        wait(lambda: redis_up(redis_port), 20, "the private redis-server")
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)

        import django

        django.setup()
        from django.contrib.auth import get_user_model

        from webapp.annotation.importers import PromptRow
        from webapp.annotation.models import Completion, Rating
        from webapp.annotation.services import completion_pool_refill, prompts_create
        from webapp.policies.models import ModelVersion, Project
        from webapp.policies.services import membership_add, project_create
        from webapp.training.models import TrainingRun
        from webapp.training.services import schedule_ensure

        if args.model_dir:
            model_dir = Path(args.model_dir)
        else:
            from pgcore.tiny import write_tiny_model

            model_dir = Path(write_tiny_model(data_dir / "models" / "tiny", seed=0))
        project = project_create(
            slug=SLUG,
            title="Chaos",
            base_model_path=model_dir,
            pool_target=60,
            min_new_ratings=100_000,  # the schedule only re-sends and reaps; runs start from Train now
            max_new_tokens=8 if not args.model_dir else 48,
            pg_config={"epochs": 1, "minibatch_size": 4, "lr": 1e-3, "lora_r": 4, "lora_alpha": 8},
        )
        prompts_create(
            project=project,
            # More training prompts than all phases sample, so phase 3's least-sampled-first choice
            # never needs a prompt twice: a prompt sampled twice there is a race.
            rows=[PromptRow(line=i + 1, text=f"Continue this review: film number {i} was") for i in range(400)]
            + [PromptRow(line=401 + i, text=f"Held-out review {i}: the plot", held_out=True) for i in range(4)],
        )
        users = get_user_model().objects
        users.create_user("boss", password=PASSWORD, is_staff=True)
        for name in ("ann1", "ann2"):
            membership_add(project=project, user=users.create_user(name, password=PASSWORD))
        completion_pool_refill(project=project, seed=1)
        schedule_ensure(train_interval_s=5, pool_interval_s=30, reap_interval_s=5)

        world.start("web", [sys.executable, "-m", "gunicorn", "webapp.wsgi", "--bind", f"127.0.0.1:{web_port}",
                            "--workers", "1", "--threads", "4"])
        world.celery("training", "worker", "-Q", "training", "-c", "1", "-n", "chaos-train@%h", "--loglevel", "INFO")
        world.celery("generation", "worker", "-Q", "generation", "-c", "1", "-n", "chaos-gen@%h", "--loglevel", "INFO")
        wait(lambda: world.log_has("training", "ready.") and world.log_has("generation", "ready."), 120, "workers")
        world.celery("beat", "beat", "--loglevel", "INFO")
        base = f"http://127.0.0.1:{web_port}"
        wait(lambda: _get_ok(base + "/healthz"), 60, "gunicorn")
        staff = Session(base)
        staff.login("boss")
        annotators = [Session(base), Session(base)]
        for session, name in zip(annotators, ("ann1", "ann2")):
            session.login(name)

        acknowledged: list[tuple[str, int]] = []  # (annotator, completion id) of every rating answered 200
        failed_posts = 0

        def rate_round(count: int) -> None:
            nonlocal failed_posts
            for _ in range(count):
                for session, name in zip(annotators, ("ann1", "ann2")):
                    try:
                        item = card(session)
                        if item is None:
                            continue
                        session.post(f"/p/{SLUG}/annotate/{item[0]}/rate/", {"score": "4" if item[0] % 2 else "2"},
                                     {"HX-Request": "true"})
                        acknowledged.append((name, item[0]))
                    except urllib.error.HTTPError as exc:
                        failed_posts += exc.code >= 500

        rate_round(4)  # ratings for the runs below (failed runs do not use them up)

        # --- 1. Kill the training worker's pool process at each stage ----------------------
        kills = []
        for stage in STAGES:
            pause.write_text(f"{stage}:{args.stage_pause}")
            staff.post(f"/staff/p/{SLUG}/train/", {})
            run = TrainingRun.objects.latest("created_at")
            try:
                run = wait(lambda: TrainingRun.objects.filter(pk=run.pk, stage=stage, status="running").first(),
                           120, f"run {run.pk} to reach {stage}", poll=0.1)
            except TimeoutError:
                kills.append({"stage": stage, "run": run.pk, "error": "never reached the stage",
                              "status": TrainingRun.objects.get(pk=run.pk).status})
                continue
            os.kill(int(run.worker.rsplit(":", 1)[1]), signal.SIGKILL)
            killed = time.monotonic()
            try:
                wait(lambda: TrainingRun.objects.filter(pk=run.pk).exclude(status="running").exists(),
                     args.lost_within + 120, f"run {run.pk} to end", poll=0.1)
                seconds = round(time.monotonic() - killed, 1)
            except TimeoutError:
                seconds = None
            run.refresh_from_db()
            project.refresh_from_db()
            leftovers = sorted(p.name for p in (data_dir / "models" / SLUG).glob(f".run-{run.pk}.*"))
            kills.append({
                "stage": stage, "run": run.pk, "status": run.status, "seconds_to_failed": seconds,
                "error": run.error, "version_written": run.result_version.number if run.result_version else None,
                "served_after": project.served_version.number, "leftover_temp_folders": leftovers,
            })
        pause.write_text("")
        result["killed_at_stage"] = kills

        # --- 2. Stop the broker while annotators rate and staff press Train now ----------
        world.stop("redis")
        down = {"ratings_before": Rating.objects.count()}
        acknowledged_before, failed_before = len(acknowledged), failed_posts
        t0 = time.monotonic()
        rate_round(args.ratings_while_down)
        down["rating_posts_answered_200"] = len(acknowledged) - acknowledged_before
        down["rating_posts_answered_5xx"] = failed_posts - failed_before
        down["seconds_for_the_ratings"] = round(time.monotonic() - t0, 1)
        try:
            page = staff.post(f"/staff/p/{SLUG}/train/", {})
            down["train_now"] = "200, says the broker is unreachable" if "broker) is unreachable" in page else "200"
        except urllib.error.HTTPError as exc:
            down["train_now"] = f"HTTP {exc.code}"
        queued = TrainingRun.objects.filter(status="queued").first()
        down["train_now_run_queued_unsent"] = bool(queued and queued.dispatched_at is None)
        world.start("redis", redis_argv)
        back = time.monotonic()
        wait(lambda: redis_up(redis_port), 20, "redis again")
        if queued:
            try:
                wait(lambda: TrainingRun.objects.filter(pk=queued.pk, dispatched_at__isnull=False).exists(), 120,
                     "the schedule to re-send the run")
                down["seconds_broker_back_to_run_sent"] = round(time.monotonic() - back, 1)
                done = wait(lambda: TrainingRun.objects.filter(pk=queued.pk, status__in=["succeeded", "failed", "cancelled"]).first(),
                            180, "the re-sent run to end")
                down["seconds_broker_back_to_run_ended"] = round(time.monotonic() - back, 1)
                down["re_sent_run_status"] = done.status
            except TimeoutError as exc:
                down["re_sent_run_status"] = str(exc)
        stored = set(Rating.objects.values_list("annotator__username", "completion_id"))
        down["ratings_lost"] = sum(1 for key in acknowledged if key not in stored)
        result["broker_stopped_during_ratings"] = down

        # --- 3. Two generation workers refill one emptied pool at once -----------------------
        from webapp.annotation.selectors import pool_size
        from webapp.broker import task_send

        world.celery("generation2", "worker", "-Q", "generation", "-c", "1", "-n", "chaos-gen2@%h", "--loglevel", "INFO")
        wait(lambda: world.log_has("generation2", "ready."), 120, "the second generation worker")
        project.refresh_from_db()
        served = project.served_version
        Completion.objects.filter(project=project, model_version=served, ratings__isnull=True).delete()
        last_before = Completion.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        refill = {"pool_target": project.pool_target, "pool_after_emptying": pool_size(project=project)}
        for _ in range(args.refill_tasks):
            task_send("webapp.annotation.tasks.pool_refill", args=[project.pk])
        t0 = time.monotonic()
        sizes = []
        while time.monotonic() - t0 < args.refill_seconds:  # both workers take tasks; watch the pool settle
            sizes.append(pool_size(project=project))
            if len(sizes) > 20 and sizes[-1] >= project.pool_target and len(set(sizes[-20:])) == 1:
                break
            time.sleep(0.5)
        group = 2 if project.rating_mode == "pairwise" else project.completions_per_prompt
        per_prompt = Counter(
            Completion.objects.filter(project=project, model_version=served, pk__gt=last_before).values_list(
                "prompt_id", flat=True
            )
        )
        refill.update(
            pool_after_refills=pool_size(project=project),
            pool_overshoot=max(0, pool_size(project=project) - project.pool_target),
            overshoot_allowed=group,
            prompts_sampled_twice_for_the_version=sum(1 for n in per_prompt.values() if n > group),
            refills_run_by_the_second_worker=(data_dir / "generation2.log").read_text(errors="replace").count(
                "tasks.pool_refill[") // 2,  # each task logs "received" and "succeeded" (or raised)
        )
        result["two_generation_workers"] = refill

        # --- Verdict -----------------------------------------------------------------------
        time.sleep(2)
        project.refresh_from_db()
        served = project.served_version
        run_of_served = TrainingRun.objects.filter(result_version=served).first()
        wrongly_served = int(
            bool(served.held_back_reason)
            or (run_of_served is not None and not (run_of_served.status == "succeeded" and run_of_served.promoted))
        )
        stuck = TrainingRun.objects.filter(status__in=["queued", "running"]).count()
        lost_seconds = [k.get("seconds_to_failed") for k in kills]
        result.update(
            runs_stuck=stuck,
            seconds_to_failed={k["stage"]: k.get("seconds_to_failed") for k in kills},
            versions_wrongly_served=wrongly_served,
            versions_held_back=ModelVersion.objects.exclude(held_back_reason="").count(),
            ratings_lost=down["ratings_lost"],
            rating_posts_answered_5xx=failed_posts,
            pool_overshoot=refill["pool_overshoot"],
            prompts_sampled_twice_for_the_version=refill["prompts_sampled_twice_for_the_version"],
        )
        result["goal_met"] = (
            stuck == 0
            and wrongly_served == 0
            and down["ratings_lost"] == 0
            and failed_posts == 0
            and refill["pool_overshoot"] <= refill["overshoot_allowed"]
            and refill["prompts_sampled_twice_for_the_version"] == 0
            and all(k.get("status") == "failed" for k in kills)
            and all(s is not None and s < args.lost_within for s in lost_seconds)
        )
    finally:
        world.stop_all()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(result, indent=1))


def _get_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
