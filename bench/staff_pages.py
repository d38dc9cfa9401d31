"""Latency of the staff pages that show plots: the run page and the versions page, each with its images.

What it does, in a fresh process per ``--repo`` (default: this checkout):

1. sets Django up on its own SQLite database and filesystem broker in a
   temporary data directory (migrated), and seeds one project with
   ``--versions`` versions (each with KL to the base and ``--ratings`` Likert
   ratings from three annotators) and one finished training run whose loss/KL
   curve has ``--steps`` points;
2. starts one Celery worker on the ``generation`` queue (``--pool solo``), as
   ``make run`` would, so that code which draws plots in the worker can do so;
3. warms up: requests each page and its plot images until no plot answers
   ``X-Plot: drawing`` (code that draws in the request never says so);
4. times ``--n`` loads of each page as a browser makes them, with Django's
   test client (no network): the HTML, then each ``<img>`` of a plot.

Output: one JSON object: ``repo``, ``n``, and per page (``run_page``,
``versions_page``) ``p50_ms`` / ``p95_ms`` of the whole load (HTML + images)
and ``requests``: p50/p95 of each URL; ``matplotlib_in_web_process``: whether
the timing process imported matplotlib.

Usage: ``.venv/bin/python bench/staff_pages.py [--repo /tmp/old] [--n 40]``
(run it on the commit before the change, e.g. extracted with
``git archive <commit> | tar -x -C /tmp/old``, for the "before" figure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from django_env import throwaway_env  # noqa: E402

HERE = Path(__file__).resolve().parent.parent


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def child(args) -> dict:
    sys.path.insert(0, str(args.repo))
    os.chdir(args.repo)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from webapp.annotation.models import Completion, Prompt, Rating
    from webapp.policies.models import ModelVersion
    from webapp.policies.services import project_create
    from webapp.training.models import TrainingRun

    call_command("migrate", verbosity=0)
    base = Path(os.environ["REWARDLOOP_DATA_DIR"]) / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    project = project_create(slug="bench", title="Bench", base_model_path=base)
    users = [get_user_model().objects.create_user(f"a{i}", password="pw-12345678") for i in range(3)]
    staff = get_user_model().objects.create_superuser("boss", password="pw-12345678")
    prompt = Prompt.objects.create(project=project, text="A prompt", text_sha256="0" * 64)
    parent = project.served_version
    for number in range(1, args.versions + 1):
        version = ModelVersion.objects.create(
            project=project, number=number, parent=parent, kind="lora", weights_path="/nonexistent",
            kl_to_base=0.01 * number, distinct2=0.5, evaluated_at=timezone.now(),
        )
        for k in range(args.ratings // 3):
            completion = Completion.objects.create(
                project=project, prompt=prompt, model_version=version, text=f"c{number}-{k}",
                prompt_token_ids=[1], token_ids=[2], behaviour_logprobs=[-1.0], finished=True,
            )
            for j, user in enumerate(users):
                Rating.objects.create(completion=completion, annotator=user, score=1 + (number + k + j) % 5)
        parent = version
    curve = [
        {"step": s, "epoch": 1 + s // 50, "losses/pg_loss": 0.1 * (s % 7), "objective/kl": 0.001 * s}
        for s in range(1, args.steps + 1)
    ]
    run = TrainingRun.objects.create(
        project=project, status="succeeded", trigger="manual", parent_version=project.served_version,
        result_version=parent, curve=curve, progress_step=args.steps, progress_total=args.steps,
        started_at=timezone.now(), finished_at=timezone.now(),
    )

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "generation", "--pool", "solo",
         "--loglevel", "WARNING"],
        cwd=args.repo, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = Client()
        client.force_login(staff)
        pages = {
            "run_page": f"/staff/p/bench/runs/{run.pk}/",
            "versions_page": "/staff/p/bench/versions/",
        }

        def load(url: str) -> dict[str, float]:
            timings = {}
            started = time.perf_counter()
            html = client.get(url)
            timings[url] = (time.perf_counter() - started) * 1000
            assert html.status_code == 200, (url, html.status_code)
            for src in re.findall(r'<img src="([^"]+\.png[^"]*)"', html.content.decode()):
                src = src.replace("&amp;", "&")
                started = time.perf_counter()
                image = client.get(src)
                timings[src.split("?")[0]] = (time.perf_counter() - started) * 1000
                assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), src
            return timings

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            drawing = 0
            for url in pages.values():
                html = client.get(url).content.decode()
                for src in re.findall(r'<img src="([^"]+\.png[^"]*)"', html):
                    drawing += client.get(src.replace("&amp;", "&")).get("X-Plot") == "drawing"
            if not drawing:
                break
            time.sleep(0.5)
        result = {"repo": str(args.repo), "n": args.n, "versions": args.versions, "curve_steps": args.steps}
        for name, url in pages.items():
            totals, per_url = [], {}
            for _ in range(args.n):
                timings = load(url)
                totals.append(sum(timings.values()))
                for key, ms in timings.items():
                    per_url.setdefault(key, []).append(ms)
            result[name] = {
                "p50_ms": _p(totals, 0.5),
                "p95_ms": _p(totals, 0.95),
                "mean_ms": round(statistics.fmean(totals), 2),
                "requests": {k: {"p50_ms": _p(v, 0.5), "p95_ms": _p(v, 0.95)} for k, v in per_url.items()},
            }
        result["matplotlib_in_web_process"] = "matplotlib" in sys.modules
        return result
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--versions", type=int, default=12)
    parser.add_argument("--ratings", type=int, default=30)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    args.repo = args.repo.resolve()
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as data_dir:
        env = throwaway_env(data_dir, models_dir=Path(data_dir) / "models", broker="filesystem://")
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--repo", str(args.repo), "--n", str(args.n),
             "--versions", str(args.versions), "--ratings", str(args.ratings), "--steps", str(args.steps)],
            env=env, capture_output=True, text=True, check=False,
        )
    if out.returncode != 0:
        sys.exit(out.stderr[-4000:])
    print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
