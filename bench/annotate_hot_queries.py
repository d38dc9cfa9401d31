"""The statements of the annotator's two hot requests, counted and explained, for one checkout.

In one process, without a server or a network: ``--checkout`` (default this
one) is imported, its Django set up on its own PostgreSQL database ``--db``
(created and dropped), seeded as ``bench/annotate_load.py`` seeds (its
``seed``), then ``--annotators`` signed-in test clients each rate
``--warm-rounds`` items (*next item*, then *submit* as htmx, the bench's
``every-item`` mix), so the database holds what a bench window leaves. Then,
over ``--rounds`` more rounds:

- statements per request (a ``connection.execute_wrapper``) of *next item* (it answers
  the card already held) and *submit* (it answers with the next card);
- CPU per request of this process (``time.process_time``: Django, the ORM,
  the template) and of its PostgreSQL backend (``/proc/<pid>/stat``), each
  divided by the requests;
- each read (SELECT) of the last annotator's last round under ``EXPLAIN (ANALYZE,
  BUFFERS)``, repeated ``--explain-repeats`` times (in a rolled-back transaction):
  its median planning and execution time and the plan's top node; the writes are
  listed (replayed they would break unique constraints).

Output: one JSON object on stdout. To compare two checkouts run it from each,
alternating, e.g. ``for i in 1 2; do for c in /work/wt/base .; do
.venv/bin/python bench/annotate_hot_queries.py --checkout $c --db <own db>; done; done``.
CPU and statement counts compare across runs; the EXPLAIN times are wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ITEM_RE = re.compile(r'data-completion="(\d+)"')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkout", default=str(HERE), help="the repository whose code runs (default this one)")
    p.add_argument("--db", default="rw_bench_hot_queries", help="PostgreSQL database to create and drop")
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server (127.0.0.1 only)")
    p.add_argument("--annotators", type=int, default=50)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--warm-rounds", type=int, default=20)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--explain-repeats", type=int, default=15)
    args = p.parse_args()
    if "127.0.0.1" not in args.pg and "localhost" not in args.pg:
        p.error("--pg must point at 127.0.0.1")
    return args


def backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def admin_sql(pg: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def main() -> int:
    args = parse_args()
    checkout = Path(args.checkout).resolve()
    sys.path.insert(0, str(checkout))
    os.chdir(checkout)
    from bench.annotate_load import SLUG, seed
    from bench.django_env import django_start

    tmp = Path(tempfile.mkdtemp(prefix="rw-bench-hot-"))
    admin_sql(args.pg, f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
    admin_sql(args.pg, f'CREATE DATABASE "{args.db}"')
    try:
        django_start(
            tmp / "data", models_dir=tmp / "models", broker="filesystem://", DATABASE_URL=f"{args.pg}/{args.db}",
            DJANGO_DEBUG="0", DJANGO_CONN_MAX_AGE="60", REWARDLOOP_CACHE_URL="", REWARDLOOP_LOG_LEVEL="WARNING",
        )
        seed(n_items=args.items, n_annotators=args.annotators, model_dir=tmp / "models" / "tiny")
        from django.contrib.auth import get_user_model
        from django.db import connection, transaction
        from django.test import Client

        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]

        clients = []
        for user in get_user_model().objects.filter(username__startswith="ann").order_by("username"):
            client = Client(HTTP_HX_REQUEST="true")
            client.force_login(user)
            clients.append(client)
        next_url, rate_url = f"/p/{SLUG}/annotate/next/", f"/p/{SLUG}/annotate/{{}}/rate/"

        def one_round(capture: bool):
            caught = {"next": [], "submit": []}
            for client in clients:
                for kind in ("next", "submit"):
                    statements = []

                    def record(execute, sql, params, many, context):
                        statements.append((sql, params))
                        return execute(sql, params, many, context)

                    with connection.execute_wrapper(record):
                        if kind == "next":
                            answer = client.post(next_url)
                            item = ITEM_RE.search(answer.content.decode()).group(1)
                        else:
                            answer = client.post(rate_url.format(item), {"score": "3"})
                    assert answer.status_code == 200 and b'class="flash error"' not in answer.content, answer.content[:300]
                    if capture:
                        caught[kind].append(statements)
            return caught

        for _ in range(args.warm_rounds):
            one_round(capture=False)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        cpu0, db0 = time.process_time(), backend_cpu_s(backend)
        for r in range(args.rounds):
            caught = one_round(capture=r == args.rounds - 1)
        n_requests = 2 * len(clients) * args.rounds
        result = {
            "checkout": str(checkout),
            "annotators": len(clients),
            "rounds": args.rounds,
            "statements_next": statistics.median(len(s) for s in caught["next"]),
            "statements_submit": statistics.median(len(s) for s in caught["submit"]),
            "process_cpu_ms_per_request": round((time.process_time() - cpu0) * 1000 / n_requests, 3),
            "db_cpu_ms_per_request": round((backend_cpu_s(backend) - db0) * 1000 / n_requests, 3),
            "load_avg_1m": os.getloadavg()[0],
        }
        explained = {}
        for kind in ("next", "submit"):
            rows = []
            for sql, params in caught[kind][-1]:
                verb = sql.split(None, 1)[0].upper()
                if verb in ("INSERT", "UPDATE", "DELETE"):
                    rows.append({"sql": " ".join(sql.split())[:160], "planning_ms": 0.0, "execution_ms": 0.0})
                if verb != "SELECT":
                    continue
                planning, execution, plan = [], [], None
                for _ in range(args.explain_repeats):
                    with transaction.atomic():
                        with connection.cursor() as cursor:
                            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
                            plan = cursor.fetchone()[0]
                            plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
                        transaction.set_rollback(True)
                    planning.append(plan["Planning Time"])
                    execution.append(plan["Execution Time"])
                rows.append({
                    "sql": " ".join(sql.split())[:160],
                    "planning_ms": round(statistics.median(planning), 3),
                    "execution_ms": round(statistics.median(execution), 3),
                    "top_node": plan["Plan"]["Node Type"],
                    "shared_hit_blocks": plan["Plan"].get("Shared Hit Blocks"),
                })
            explained[kind] = rows
            result[f"explain_ms_{kind}"] = round(sum(r["planning_ms"] + r["execution_ms"] for r in rows), 3)
        result["explain"] = explained
        print(json.dumps(result))
        connection.close()
        return 0
    finally:
        admin_sql(args.pg, f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
