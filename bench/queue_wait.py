"""Does an annotator ever wait for a card? The pool's low-water refill against simulated people.

Starts the app's web server (gunicorn) and one generation worker (Celery, ``-c 1``)
in a fresh data directory, with the demo project on the real SmolLM2 (from
``--models-dir``, converted once and reused), and **no beat and no training**: the
only refills are those the annotation views ask for when the pool falls below the
project's low-water mark (``Project.pool_low_water``) or the queue is empty. So this
measures that mechanism alone. The initial fill (to ``--pool``) is not measured.

Then ``--annotators`` simulated people rate for ``--seconds`` over HTTP as the
browser does (htmx POSTs): the answer to a rating is the next card; when it is the
"writing new outputs" card, the person waits, asking again every ``--poll-s``
(the browser asks every 3 s; a finer poll measures when an item became available).
Each person thinks ``--think-s`` (uniform in [0.5, 1.5] × think) per item.

Output: one JSON object: the settings, ``ratings``, ``waits`` (how many times someone
met an empty queue), ``longest_wait_s``, ``total_wait_s``, ``min_pool`` (smallest pool
seen in /healthz, polled every second), ``completions_generated``.

    .venv/bin/python bench/queue_wait.py --models-dir /work/main/var/models \
        --vader-sdist /work/main/var/downloads/vaderSentiment-3.3.2.tar.gz --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from django_env import stop_group, throwaway_env  # noqa: E402
from loop_timing import PASSWORD, Session, healthz, wait  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SLUG = "demo"


def next_card(session: Session, body: str | None = None) -> int | None:
    html = body if body is not None else session.post(f"/p/{SLUG}/annotate/next/", {}, {"HX-Request": "true"})
    match = re.search(r'data-completion="(\d+)"', html)
    return int(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8831)
    parser.add_argument("--models-dir", default=os.environ.get("REWARDLOOP_MODELS_DIR"))
    parser.add_argument("--vader-sdist", help="vaderSentiment-3.3.2.tar.gz (the demo prompts)")
    parser.add_argument("--annotators", type=int, default=2, help="the demo has two annotator accounts")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--think-s", type=float, default=3.0)
    parser.add_argument("--poll-s", type=float, default=0.25)
    parser.add_argument("--pool", type=int, default=32, help="Project.pool_target")
    parser.add_argument("--low-water", type=int, default=16, help="Project.pool_low_water")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="rl-queue-wait-"))
    env = throwaway_env(data_dir, broker=None, PORT=str(args.port), DEMO_PASSWORD=PASSWORD)
    if args.models_dir:
        env["REWARDLOOP_MODELS_DIR"] = args.models_dir
    python = sys.executable
    log = open(data_dir / "servers.log", "w")
    run = lambda *cmd: subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)  # noqa: E731
    run(python, "manage.py", "migrate", "--noinput")
    demo = [python, "manage.py", "bootstrap_demo"] + (["--vader-sdist", args.vader_sdist] if args.vader_sdist else [])
    run(*demo)  # also queues the first refill
    run(
        python, "manage.py", "shell", "-c",
        "from webapp.policies.models import Project; "
        f"Project.objects.filter(slug='{SLUG}').update(pool_target={args.pool}, pool_low_water={args.low_water}, "
        f"max_new_tokens={args.max_new_tokens}, rating_mode='likert', ratings_per_item=1)",
    )  # fmt: skip
    procfile = data_dir / "Procfile"
    procfile.write_text(
        f"web: {Path(python).parent}/gunicorn webapp.wsgi --bind 127.0.0.1:{args.port} --workers 2 --threads 4\n"
        f"generation: {Path(python).parent}/celery -A webapp worker -Q generation -c 1 -n gen-bench@%h --loglevel INFO\n"
    )
    servers = subprocess.Popen(
        [python, "-m", "honcho", "start", "-f", str(procfile), "-d", str(REPO)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{args.port}"
    result: dict = {k: v for k, v in vars(args).items() if k != "models_dir"}
    try:
        wait(lambda: healthz(base), 300, "/healthz")
        t0 = time.monotonic()
        wait(lambda: (h := healthz(base)) and h["projects"][SLUG]["pool_size"] >= args.pool, 1800, "the first full pool", poll=1)
        result["initial_fill_s"] = round(time.monotonic() - t0, 1)

        stop_at = time.monotonic() + args.seconds
        lock = threading.Lock()
        waits: list[float] = []
        ratings = [0]
        pools: list[int] = []

        def person(k: int) -> None:
            rng = random.Random(args.seed + k)
            session = Session(base)
            session.login(f"annotator{k + 1}")
            item = next_card(session)
            while time.monotonic() < stop_at:
                if item is None:
                    started = time.monotonic()
                    while item is None and time.monotonic() < stop_at:
                        time.sleep(args.poll_s)
                        item = next_card(session)
                    with lock:
                        waits.append(time.monotonic() - started)
                    continue
                time.sleep(args.think_s * rng.uniform(0.5, 1.5))
                body = session.post(f"/p/{SLUG}/annotate/{item}/rate/", {"score": rng.randint(1, 5)}, {"HX-Request": "true"})
                with lock:
                    ratings[0] += 1
                item = next_card(session, body)

        def watch_pool() -> None:
            while time.monotonic() < stop_at:
                h = healthz(base)
                if h:
                    pools.append(h["projects"][SLUG]["pool_size"])
                time.sleep(1)

        threads = [threading.Thread(target=person, args=(k,)) for k in range(args.annotators)]
        threads.append(threading.Thread(target=watch_pool))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.update(
            ratings=ratings[0],
            waits=len(waits),
            longest_wait_s=round(max(waits, default=0.0), 2),
            total_wait_s=round(sum(waits), 2),
            min_pool=min(pools, default=None),
        )
        run(
            python, "manage.py", "shell", "-c",
            "from webapp.annotation.models import Completion; print('GENERATED', Completion.objects.count())",
        )  # fmt: skip
        log.flush()
        generated = re.findall(r"GENERATED (\d+)", (data_dir / "servers.log").read_text())
        result["completions_generated"] = int(generated[-1]) if generated else None
    finally:
        stop_group(servers, timeout=30)
    result["data_dir"] = str(data_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
