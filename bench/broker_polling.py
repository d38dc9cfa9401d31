"""What a worker's broker polling costs: CPU while idle (from /proc) and the wait between chained tasks.

    nice -n 10 .venv/bin/python bench/broker_polling.py [--repo ../base] [--seconds 60] [--hops 20] [--broker URL]

Starts ``celery -A webapp worker -Q <own queue> -c 1`` (prefork, as in the Procfile) from
``--repo``'s code on a throwaway data folder (:func:`django_env.throwaway_env`; that
checkout's default broker unless ``--broker``), waits for ``ready.`` and for the pool
child's start-up to end (a 3 s window costing under 0.1 CPU s; at most 90 s).

1. Idle: user + system CPU seconds of every process in the worker's process group
   (``/proc/<pid>/stat``) over ``--seconds`` with nothing queued. CPU time, so it holds
   on a shared machine.
2. Hops: a chain of ``--hops`` tasks, each sending the next as its last act (as a training
   run's step sends the next step): seconds from one task's send to the next task's
   start (wall time; with ``-c 1`` and prefetch 1 the worker finds the next message at
   its next poll after the running task is acknowledged).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import shared_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from django_env import REPO, stop_group, throwaway_env  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
QUEUE = "polling-bench"


@shared_task(name="bench.broker_polling.hop")
def hop(out: str, index: int, hops: int, sent: float) -> None:
    """Append ``[index, sent, started]`` (epoch seconds) to ``out``; send hop ``index + 1`` unless it was the last."""
    started = time.time()
    with open(out, "a") as f:
        f.write(json.dumps([index, sent, started]) + "\n")
    if index + 1 < hops:
        hop.apply_async(args=[out, index + 1, hops, time.time()], queue=QUEUE)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes whose process group is ``pgid`` (``/proc/<pid>/stat``)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3 (state)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle measurement")
    parser.add_argument("--hops", type=int, default=20)
    parser.add_argument("--broker", default=None, help="CELERY_BROKER_URL (default: the checkout's default)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="broker-polling-") as data_dir:
        # None: the checkout's default broker. This folder on PYTHONPATH: the worker imports the hop task.
        env = throwaway_env(data_dir, broker=args.broker, PYTHONPATH=str(Path(__file__).resolve().parent))
        log = Path(data_dir, "worker.log")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", QUEUE, "-c", "1",
             "--include", "broker_polling", "--loglevel", "INFO"],
            cwd=args.repo, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "ready." not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            settle_deadline = time.monotonic() + 90
            while time.monotonic() < settle_deadline:
                start = group_cpu_seconds(proc.pid)
                time.sleep(3)
                if group_cpu_seconds(proc.pid) - start < 0.1:
                    break
            before, t0 = group_cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds)
            after, wall = group_cpu_seconds(proc.pid), time.monotonic() - t0

            os.environ.update(env)  # this process publishes to the worker's broker
            os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
            sys.path.insert(0, str(args.repo))
            from webapp.celery import app

            out = Path(data_dir, "hops.jsonl")
            app.send_task("bench.broker_polling.hop", args=[str(out), 0, args.hops, time.time()], queue=QUEUE)
            deadline = time.monotonic() + 30 + 5 * args.hops
            while not out.exists() or len(out.read_text().splitlines()) < args.hops:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the chain did not finish:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            waits = [started - sent for _, sent, started in map(json.loads, out.read_text().splitlines())]
        finally:
            stop_group(proc)
    commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(json.dumps({
        "repo": str(args.repo), "commit": commit.stdout.strip(), "broker": args.broker or "(default)",
        "idle_wall_s": round(wall, 1), "idle_cpu_s": round(after - before, 2),
        "idle_cpu_s_per_minute": round((after - before) / wall * 60, 2),
        "hops": args.hops, "hop_wait_s_median": round(statistics.median(waits), 3),
        "hop_wait_s_mean": round(statistics.mean(waits), 3), "hop_wait_s_max": round(max(waits), 3),
        "loadavg": os.getloadavg(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
