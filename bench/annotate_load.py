"""Annotation under load: 50 simulated annotators against gunicorn on PostgreSQL.

What it does, all on 127.0.0.1:

1. creates (and at the end drops) its own PostgreSQL database ``--db``
   (default ``rw_bench_load``), migrates it;
2. seeds a Likert project on a tiny random model folder (never loaded:
   generation is not what this measures), ``--items`` completions inserted
   directly, and one user per annotator (one password hash, reused); then
   ``ANALYZE``, so the planner has the statistics a database in service has
   (autovacuum would gather them about a minute later, inside the window);
3. serves the app with gunicorn (``--workers`` sync workers, or gthread
   workers with ``--threads`` > 1) configured as a production deployment:
   persistent database connections (``DJANGO_CONN_MAX_AGE=60``) and the
   shared Redis cache ``--cache`` (``REWARDLOOP_CACHE_URL``, see
   ``webapp/settings.py``), which also serves sessions (``cached_db``: no
   session query per request; the bench deletes its sessions from that cache
   at the end). ``make run`` gets the same by setting those two variables;
   its Procfile runs 2 gthread workers of 4 threads (SQLite by default);
4. runs ``--annotators`` simulated annotators for ``--seconds``, each in its
   own thread with its own ``requests.Session``, logged in through the real
   login form (its own session and CSRF cookie). Each loop: *next item*
   (``POST /p/<slug>/annotate/next/`` as htmx, what the card sends as it
   loads: it leases an item, or answers the one held; ``GET .../card/`` only
   reads since a page load writes nothing) → think for ``--think-s``
   (uniform in [0.5, 1.5] × think) → *submit* (``POST .../rate/`` as htmx,
   which answers with the next card). That is ``--mix every-item``, the
   default. With ``--mix browser`` each annotator behaves as the page does: *next item*
   only when it holds no card (as the page loads, or after an empty queue),
   otherwise the card the submit answered with is the next one to rate, so
   a keypress is one request, while ``every-item`` sends *next item* again
   after every submit (it answers the card already held): twice the requests
   a browser sends. Annotators open the page at a random
   moment within ``--ramp-s`` of the start (default 0: all at once);
5. counts from the database what was stored.

Server CPU per request, beside the latencies: gunicorn serves the app through
``bench/server_cpu_wsgi.py``, which adds to each response the CPU time its
worker thread spent on it (``X-Server-CPU-ms``): ``p50/p95_cpu_ms_next`` and
``..._submit``. Over the whole window it also reads the CPU time (``/proc``) of
the gunicorn processes and of the PostgreSQL backends serving the bench
database: ``server_cpu_ms_per_request`` (the web workers, everything included)
and ``db_cpu_ms_per_request`` (PostgreSQL), each divided by the requests
answered. Latency on a shared machine includes waiting for a core; CPU time
does not, so it is the figure that compares across runs.

Where the latency goes: the wrapper also sends the worker's wall time per
request (``X-Server-ms``: ``p50/p95_server_ms_next`` and ``..._submit``) and
when it began (``X-Server-Start``, the machine's monotonic clock), so each
latency the client saw splits into ``backlog_ms`` (waiting in gunicorn's listen
backlog until the worker that served it had finished its previous request: all
workers were busy; the pid in ``X-Server-Pid`` says which), the server's own
time, and ``client_ms``, the rest: the client sending, reading and parsing,
waiting for a core or its interpreter lock (see ``latency_parts``).
``client_cpu_ms_per_request``: the client's own CPU over the window, per request.

Client: ``requests`` sessions in threads rather than locust: locust needs
gevent's monkey-patching (which would also patch the Django ORM used here to
seed and count) and brings a web UI and its own process model; blocking
sessions, one thread each, are exactly "50 people with a browser each". They
all run in this process by default (the client of every figure so far); with
``--client-procs N`` they are dealt round-robin to N spawned processes, so the
50 threads do not all queue for one interpreter lock. ``client_ms`` says how
much of the latency is the client's at all: under load it was a small share,
and N processes spend as much client CPU per request.

Output: one JSON object on stdout with ``annotators``, ``requests_per_s``,
``p50/p95/p99_ms_next``, ``p50/p95/p99_ms_submit``, the CPU figures above, ``submitted`` (answered
200 without an error message), ``stored`` (ratings in the database),
``duplicates`` (items rated by more people than ``ratings_per_item``, plus
items handed to two annotators at once), ``errors`` (non-200 answers,
error messages, exceptions), and the settings used.

Usage::

    .venv/bin/python bench/annotate_load.py                 # 60 s, 50 annotators
    .venv/bin/python bench/annotate_load.py --seconds 10    # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.django_env import django_start, stop_group  # noqa: E402

PASSWORD = "bench-password-123"
SLUG = "load"
ITEM_RE = re.compile(r'data-completion="(\d+)"')
CPU_HEADER = "X-Server-CPU-ms"  # set by bench/server_cpu_wsgi.py, as the two below
WALL_HEADER = "X-Server-ms"
START_HEADER = "X-Server-Start"
PID_HEADER = "X-Server-Pid"
KINDS = ("next", "submit")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (gunicorn's master and workers), from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(pids) -> dict[int, float]:
    """User + system CPU seconds of each process still alive (``/proc/<pid>/stat``, fields 14-15)."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def db_backend_pids(pg: str, db: str) -> list[int]:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,))]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the measured window (default 60)")
    p.add_argument("--annotators", type=int, default=50)
    p.add_argument("--think-s", type=float, default=1.0, help="mean think time between seeing an item and submitting")
    p.add_argument(
        "--mix",
        choices=("every-item", "browser"),
        default="every-item",
        help="every-item (the default, the workload of every figure in the README): next item before every item "
        "(it answers the card already held after a submit); browser: next item only when no card is held (the "
        "submit answers with the next card), as the page does, so next item is mostly the page opens",
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="client processes the annotators are dealt to round-robin, a thread each (default 1: all in this "
        "process, the client of every figure so far; e.g. 5: ten annotators a process at 50)",
    )
    p.add_argument("--ramp-s", type=float, default=0.0, help="annotators open the page uniformly within this many seconds")
    p.add_argument("--items", type=int, default=0, help="completions to seed (default: enough for the window)")
    p.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (more than 1: gunicorn's gthread workers)")
    p.add_argument("--db", default="rw_bench_load", help="PostgreSQL database to create and drop")
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server (127.0.0.1 only)")
    p.add_argument(
        "--cache",
        default="redis://127.0.0.1:6379/14",
        help="REWARDLOOP_CACHE_URL for the server: the shared cache that also serves sessions ('' = none)",
    )
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    args = p.parse_args()
    if "127.0.0.1" not in args.pg and "localhost" not in args.pg:
        p.error("--pg must point at 127.0.0.1")
    if not 1 <= args.annotators <= 200 or not 1 <= args.seconds <= 600:
        p.error("--annotators must be 1-200 and --seconds 1-600")
    if not 1 <= args.client_procs <= args.annotators:
        p.error("--client-procs must be 1 to --annotators")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_sql(pg: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def seed(*, n_items: int, n_annotators: int, model_dir: Path) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from pgcore.tiny import write_tiny_model
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.models import Completion
    from webapp.annotation.services import prompts_create
    from webapp.policies.models import Membership
    from webapp.policies.services import project_create

    project = project_create(
        slug=SLUG, title="Load test", base_model_path=write_tiny_model(model_dir, seed=0), pool_target=32
    )
    prompts_create(project=project, rows=[PromptRow(line=i + 1, text=f"Review {i}: the film was") for i in range(50)])
    prompts = list(project.prompts.all())
    Completion.objects.bulk_create(
        (
            Completion(
                project=project,
                prompt=prompts[i % len(prompts)],
                model_version=project.served_version,
                text=f"completion {i}: a perfectly ordinary continuation of the review, long enough to read.",
                prompt_token_ids=[5, 6, 7],
                token_ids=[10, 11, 12, 13],
                behaviour_logprobs=[-1.0] * 4,
                finished=True,
            )
            for i in range(n_items)
        ),
        batch_size=2000,
    )
    hashed = make_password(PASSWORD)
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"ann{i:03d}", password=hashed) for i in range(n_annotators)
    )
    users = get_user_model().objects.filter(username__in=[u.username for u in users])  # with their ids on SQLite too
    Membership.objects.bulk_create(Membership(project=project, user=user) for user in users)


class Annotator(threading.Thread):
    def __init__(
        self, base: str, username: str, start_at: float, stop_at: float, think_s: float, seed: int,
        mix: str = "browser", ramp_s: float = 0.0,
    ):
        super().__init__(daemon=True)
        self.mix, self.ramp_s = mix, ramp_s
        self.held: int | None = None  # the item of the card on screen (browser mix)
        self.base, self.username = base, username
        self.start_at, self.stop_at, self.think_s = start_at, stop_at, think_s
        self.rng = random.Random(seed)
        self.requests: list[tuple] = []  # see post
        self.submitted = 0
        self.errors: list[str] = []
        self.seen: list[tuple[float, int]] = []  # (time, completion id) of each item handed out
        self.empty = 0

    def login(self):
        import requests

        self.session = requests.Session()
        page = self.session.get(f"{self.base}/accounts/login/", timeout=30)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        answer = self.session.post(
            f"{self.base}/accounts/login/",
            data={"csrfmiddlewaretoken": token, "username": self.username, "password": PASSWORD},
            headers={"Referer": f"{self.base}/accounts/login/"},
            timeout=30,
            allow_redirects=False,
        )
        if answer.status_code != 302:
            raise RuntimeError(f"login of {self.username} failed: {answer.status_code}")
        self.headers = {"HX-Request": "true", "X-CSRFToken": self.session.cookies["csrftoken"]}

    def post(self, kind: str, url: str, **kwargs):
        """POST as htmx and record ``(kind, sent, answered, began, server_ms, cpu_ms, pid)``: when the
        client called and had the answer read, and from ``bench/server_cpu_wsgi.py`` when the worker
        began, its wall and CPU milliseconds and its pid (NaN / 0 when a header is missing). Times are
        ``time.monotonic()``, one clock for every process of the machine (see :func:`latency_parts`)."""
        sent = time.monotonic()
        answer = self.session.post(url, headers=self.headers, timeout=30, **kwargs)
        answered = time.monotonic()
        h = answer.headers
        self.requests.append((
            kind, sent, answered, float(h.get(START_HEADER, "nan")), float(h.get(WALL_HEADER, "nan")),
            float(h.get(CPU_HEADER, "nan")), int(h.get(PID_HEADER, "0")),
        ))  # fmt: skip
        return answer

    def result(self) -> dict:
        """What the parent counts, picklable (a client process sends it back)."""
        return {
            "username": self.username, "requests": self.requests, "submitted": self.submitted,
            "errors": self.errors, "seen": self.seen, "empty": self.empty,
        }

    def run(self):
        try:
            opens_at = self.start_at + self.rng.uniform(0, self.ramp_s)
            while time.monotonic() < opens_at:
                time.sleep(0.01)
            while time.monotonic() < self.stop_at:
                self.cycle()
        except Exception as exc:  # noqa: BLE001 - counted, reported
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def cycle(self):
        if self.held is None:
            card = self.post("next", f"{self.base}/p/{SLUG}/annotate/next/")
            if card.status_code != 200:
                self.errors.append(f"next: HTTP {card.status_code}")
                return
            match = ITEM_RE.search(card.text)
            if not match:
                self.empty += 1
                time.sleep(0.5)
                return
            item = int(match.group(1))
            self.seen.append((time.monotonic(), item))
        else:
            item, self.held = self.held, None  # the card the last submit answered with
        time.sleep(self.think_s * self.rng.uniform(0.5, 1.5))
        if time.monotonic() >= self.stop_at:
            return  # the window closed while thinking: not submitted, not counted
        answer = self.post("submit", f"{self.base}/p/{SLUG}/annotate/{item}/rate/", data={"score": str(self.rng.randint(1, 5))})
        if answer.status_code != 200 or 'class="flash error"' in answer.text:
            self.errors.append(f"submit: HTTP {answer.status_code} {answer.text[:200] if answer.status_code == 200 else ''}")
        else:
            self.submitted += 1
            following = ITEM_RE.search(answer.text)
            if self.mix == "browser" and following:
                self.held = int(following.group(1))
                self.seen.append((time.monotonic(), self.held))


def client_process(base: str, specs: list[tuple[str, int]], think_s: float, mix: str, ramp_s: float, out_q, start_conn) -> None:
    """One client process (``--client-procs`` > 1): its share of the annotators, ``specs`` (username,
    seed), each in its own thread with its own session, as the single-process client runs them all.
    Logs them in, says ``("ready", None)`` on ``out_q``, waits for ``(start, stop)`` (monotonic
    seconds, one clock for the machine) on ``start_conn``, runs them, and puts ``("done", {...})``:
    its CPU seconds over the window and each annotator's :meth:`Annotator.result`."""
    try:
        annotators = [Annotator(base, name, 0, 0, think_s, seed=seed, mix=mix, ramp_s=ramp_s) for name, seed in specs]
        for a in annotators:
            a.login()
        out_q.put(("ready", None))
        start, stop = start_conn.recv()
        cpu0 = time.process_time()
        for a in annotators:
            a.start_at, a.stop_at = start, stop
            a.start()
        for a in annotators:
            a.join(timeout=max(stop - time.monotonic(), 0) + 60)
        out_q.put(("done", {"cpu_s": time.process_time() - cpu0, "annotators": [a.result() for a in annotators]}))
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        out_q.put(("failed", f"{type(exc).__name__}: {exc}"))


def run_clients(args, base: str, begin_window) -> tuple[list[dict], float]:
    """Run the annotators until the window ends; returns each one's :meth:`Annotator.result` and the
    client's CPU seconds over the window. ``--client-procs 1``: every annotator a thread of this
    process (the client of every figure before this option); more: the annotators dealt round-robin
    to that many client processes (spawned: no Django or connection inherited), each a thread per
    annotator, so no one interpreter lock serialises all 50 annotators' reading and parsing.
    ``begin_window(start)`` is called once every annotator has logged in (it waits until ``start``
    and reads the servers' CPU)."""
    specs = [(f"ann{i:03d}", i) for i in range(args.annotators)]
    if args.client_procs == 1:
        annotators = [
            Annotator(base, name, 0, 0, args.think_s, seed=seed, mix=args.mix, ramp_s=args.ramp_s) for name, seed in specs
        ]
        for a in annotators:
            a.login()
        start = time.monotonic() + 0.5
        stop = start + args.seconds
        cpu0 = time.process_time()
        for a in annotators:
            a.start_at, a.stop_at = start, stop
            a.start()
        begin_window(start)
        for a in annotators:
            a.join(timeout=args.seconds + 60)
        return [a.result() for a in annotators], time.process_time() - cpu0
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out_q = ctx.Queue()
    procs, conns = [], []
    for k in range(args.client_procs):
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(
            target=client_process,
            args=(base, specs[k :: args.client_procs], args.think_s, args.mix, args.ramp_s, out_q, child_conn),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
        conns.append(parent_conn)
    try:
        for _ in procs:
            kind, detail = out_q.get(timeout=300)
            if kind != "ready":
                raise RuntimeError(f"a client process failed: {detail}")
        start = time.monotonic() + 0.5
        stop = start + args.seconds
        for conn in conns:
            conn.send((start, stop))
        begin_window(start)
        results, cpu_s = [], 0.0
        for _ in procs:
            kind, detail = out_q.get(timeout=args.seconds + 120)
            if kind != "done":
                raise RuntimeError(f"a client process failed: {detail}")
            results += detail["annotators"]
            cpu_s += detail["cpu_s"]
        return results, cpu_s
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


def latency_parts(requests: list[tuple]) -> dict[str, dict[str, list[float]]]:
    """Each kind's latencies split, in ms, from every annotator's :meth:`Annotator.post` records.

    ``ms``: what the client saw. ``server``: the worker's wall time; ``cpu``: its CPU. ``backlog``:
    from the client's call until the worker that served it had finished its previous request (the
    request waited in the listen backlog for it: all workers were busy), 0 when that worker was
    free. ``client``: the rest, the client's own time: sending (and the idle worker waking up) before
    the worker began, and reading and parsing the answer after it ended, waiting for a core or the
    client's interpreter lock included. ``ms = backlog + server + client`` per request. A request
    without the server's headers counts only in ``ms``.
    """
    prev_end: dict[tuple, float] = {}
    by_worker: dict[int, list[tuple]] = defaultdict(list)
    for r in requests:
        by_worker[r[6]].append(r)
    for served in by_worker.values():
        served.sort(key=lambda r: r[3])
        end = float("-inf")
        for r in served:
            prev_end[r] = end
            end = r[3] + r[4] / 1000
    parts = {kind: defaultdict(list) for kind in KINDS}
    for r in requests:
        kind, sent, answered, began, server_ms, cpu_ms, pid = r
        out = parts[kind]
        out["ms"].append((answered - sent) * 1000)
        if began != began or pid == 0:  # NaN: no headers
            continue
        backlog = min(max(prev_end[r] - sent, 0.0), max(began - sent, 0.0)) * 1000
        out["server"].append(server_ms)
        out["cpu"].append(cpu_ms)
        out["backlog"].append(backlog)
        out["client"].append((answered - sent) * 1000 - server_ms - backlog)
    return parts


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 2)


def wait_for_server(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited early")
        try:
            if requests.get(f"{base}/accounts/login/", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError("gunicorn did not answer in time")


def main() -> int:
    args = parse_args()
    n_items = args.items or int(args.annotators * args.seconds / max(args.think_s, 0.05) * 1.5) + 200
    tmp = Path(tempfile.mkdtemp(prefix="rw-bench-load-"))
    admin_sql(args.pg, f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
    admin_sql(args.pg, f'CREATE DATABASE "{args.db}"')
    server = None
    try:
        django_start(
            tmp / "data",
            models_dir=tmp / "models",
            broker="filesystem://",  # pool nudges land in a folder nobody reads
            DATABASE_URL=f"{args.pg}/{args.db}",  # its own PostgreSQL database, dropped at the end
            DJANGO_DEBUG="0",
            DJANGO_CONN_MAX_AGE="60",  # persistent connections, as a production deployment runs
            REWARDLOOP_CACHE_URL=args.cache,
            REWARDLOOP_LOG_LEVEL="WARNING",
        )
        seed(n_items=n_items, n_annotators=args.annotators, model_dir=tmp / "models" / "tiny")
        from django.db import connection

        with connection.cursor() as cursor:
            # Planner statistics, as a database in service has them (autovacuum would
            # gather them about a minute after the seeding, inside the measured window).
            cursor.execute("ANALYZE")
        connection.close()

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "server_cpu_wsgi:application",
                "--pythonpath", str(REPO / "bench"),
                "--bind", f"127.0.0.1:{port}",
                "--workers", str(args.workers),
                "--worker-class", "sync" if args.threads == 1 else "gthread",
                "--threads", str(args.threads),
                "--backlog", "256",
                "--log-level", "warning",
            ],
            cwd=REPO,
            env=dict(os.environ),  # the same throwaway set-up as this process
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "gunicorn.log", "w"),
            start_new_session=True,
        )
        wait_for_server(base, server)

        window = {}

        def begin_window(start: float) -> None:
            while time.monotonic() < start:
                time.sleep(0.01)
            window["start"] = start
            # Persistent connections: each worker's PostgreSQL backend exists after its first request
            # (the logins), so the backends read now serve the whole window.
            window["web"] = cpu_seconds(process_tree(server.pid))
            window["db"] = cpu_seconds(db_backend_pids(args.pg, args.db))

        annotators, client_cpu_s = run_clients(args, base, begin_window)
        start, web_before, db_before = window["start"], window["web"], window["db"]
        elapsed = time.monotonic() - start
        web_after = cpu_seconds(web_before)
        db_after = cpu_seconds(db_backend_pids(args.pg, args.db))
        web_cpu_s = sum(web_after[p] - web_before[p] for p in web_after)
        db_cpu_s = sum(db_after[p] - db_before.get(p, 0.0) for p in db_after)

        from django.db.models import Count

        from webapp.annotation.models import Rating
        from webapp.policies.models import Project

        project = Project.objects.get(slug=SLUG)
        stored = Rating.objects.filter(completion__project=project).count()
        over_rated = (
            Rating.objects.filter(completion__project=project)
            .values("completion_id")
            .annotate(n=Count("id"))
            .filter(n__gt=project.ratings_per_item)
            .count()
        )
        holders = defaultdict(set)
        for a in annotators:
            for _, item in a["seen"]:
                holders[item].add(a["username"])
        shared = sum(1 for people in holders.values() if len(people) > project.ratings_per_item)
        timing = latency_parts([r for a in annotators for r in a["requests"]])
        next_ms, submit_ms = timing["next"]["ms"], timing["submit"]["ms"]
        errors = [e for a in annotators for e in a["errors"]]
        n_requests = len(next_ms) + len(submit_ms)
        result = {
            "annotators": args.annotators,
            "seconds": round(elapsed, 1),
            "think_s_mean": args.think_s,
            "mix": args.mix,
            "ramp_s": args.ramp_s,
            "gunicorn_workers": args.workers,
            "gunicorn_threads": args.threads,
            "cache": args.cache or "none (sessions in the database)",
            "database": "postgresql",
            "client": "requests.Session per annotator, one thread each",
            "client_procs": args.client_procs,
            "items_seeded": n_items,
            "requests": n_requests,
            "requests_per_s": round(n_requests / elapsed, 1),
            "p50_ms_next": percentile(next_ms, 50),
            "p95_ms_next": percentile(next_ms, 95),
            "p99_ms_next": percentile(next_ms, 99),
            "p50_ms_submit": percentile(submit_ms, 50),
            "p95_ms_submit": percentile(submit_ms, 95),
            "p99_ms_submit": percentile(submit_ms, 99),
            **{
                f"p{q}_{label}_{kind}": percentile(timing[kind][m], q)
                for m, label in (("server", "server_ms"), ("backlog", "backlog_ms"), ("client", "client_ms"), ("cpu", "cpu_ms"))
                for kind in KINDS
                for q in (50, 95)
            },
            "server_cpu_ms_per_request": round(web_cpu_s * 1000 / max(n_requests, 1), 2),
            "db_cpu_ms_per_request": round(db_cpu_s * 1000 / max(n_requests, 1), 2),
            "client_cpu_ms_per_request": round(client_cpu_s * 1000 / max(n_requests, 1), 2),
            "cpu_note": (
                "p50/p95_cpu_ms_*: CPU of the worker thread per request (X-Server-CPU-ms); "
                "server/db/client_cpu_ms_per_request: CPU of all gunicorn processes / the database's backends / "
                "the client process(es) over the window, per request answered; p50/p95_*_ms_*: the latency split "
                "(p_ms = backlog + server + client per request, not per percentile): server_ms the worker's wall "
                "time (X-Server-ms), backlog_ms waiting for the serving worker to finish its previous request, "
                "client_ms the rest (the client sending, reading, parsing; its GIL and a core included)"
            ),
            "submitted": sum(a["submitted"] for a in annotators),
            "stored": stored,
            "duplicates": over_rated + shared,
            "errors": len(errors),
            "empty_queue_answers": sum(a["empty"] for a in annotators),
            "error_samples": errors[:5],
        }
        print(json.dumps(result))
        return 0
    finally:
        if server is not None and server.poll() is None:
            stop_group(server, timeout=15)
        try:
            from django.contrib.sessions.models import Session
            from django.core.cache import cache
            from django.db import connections

            if args.cache:  # the sessions the annotators left in the shared cache
                prefix = "django.contrib.sessions.cached_db"
                cache.delete_many([prefix + key for key in Session.objects.values_list("session_key", flat=True)])
            connections.close_all()
        except Exception:  # noqa: BLE001 - Django may not be set up
            pass
        if not args.keep_db:
            admin_sql(args.pg, f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
