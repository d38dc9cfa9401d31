"""What relaying one ``/v1/`` request costs, without the model: the web app and the inference process's
front over a stand-in engine that answers at once.

Starts, on a throwaway SQLite database, gunicorn (1 worker, 32 threads, as ``bench/serve.py``) and
the inference process's HTTP front (:func:`webapp.serving.inference_server.make_handler`) over a
stub engine that streams a fixed answer as soon as a request is submitted, for a project
annotator's API token. Then:

- 100 streaming chat completions one after another through one client: CPU milliseconds per
  request of the web process and of the front (``/proc``, user + system), and per request the
  front's SQL statements, database connections opened and TCP connections accepted;
- three bursts of 16 concurrent requests, each after 6 s idle: the TCP connections the web
  app's relay opened to the front per burst (the rest reused).

Counts do not depend on the machine's load; the CPU figures depend on it far less than wall time.
``--repo OTHER_CHECKOUT`` measures another checkout's code (e.g. main) with this script. Prints one
JSON object. Not a test.

Usage: python bench/serve_relay.py [--repo OTHER_CHECKOUT] [--requests 100]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from annotate_load import cpu_seconds, process_tree  # noqa: E402
from django_env import django_start, stop_group  # noqa: E402


def front(port: int, model_dir: str) -> None:
    """The inference process's front on ``port`` over a stub engine; ``GET /counts`` answers its counters."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    django.setup()
    from http.server import ThreadingHTTPServer

    from django.db.backends import utils
    from django.db.backends.base.base import BaseDatabaseWrapper
    from transformers import AutoTokenizer

    from webapp.serving import inference_server
    from webapp.serving.engine import Arrival, Request

    counts = {"statements": 0, "db_connects": 0, "tcp_connections": 0}
    lock = threading.Lock()

    def bump(name):
        with lock:
            counts[name] += 1

    connect, execute = BaseDatabaseWrapper.connect, utils.CursorWrapper.execute

    def counted_connect(self, *args, **kwargs):
        bump("db_connects")
        return connect(self, *args, **kwargs)

    def counted_execute(self, *args, **kwargs):
        bump("statements")
        return execute(self, *args, **kwargs)

    BaseDatabaseWrapper.connect, utils.CursorWrapper.execute = counted_connect, counted_execute
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    answer = tokenizer("Hello there, friend")["input_ids"]

    class Loaded:
        version_number = 0

    Loaded.tokenizer = tokenizer

    class StubEngine:
        batches_run = rows_run = tokens_run = 0
        _cv = threading.Condition()

        def arrival(self):
            return Arrival(self)

        def _arrived(self, arrival):
            arrival.open = False

        def loaded(self, version_id):
            return Loaded

        def submit(self, version_id, prompt_ids, params, arrival=None, **kwargs):
            request = Request(key=str(version_id), prompt_ids=prompt_ids, params=params)
            request.events.put(("start", Loaded))
            for token in answer:
                request.events.put(("token", 0, token))
            request.events.put(("end", 0, {"token_ids": answer, "logprobs": [0.0] * len(answer), "finished": True}))
            return request

    engine = StubEngine()
    base = inference_server.make_handler(engine, inference_server.Versions(engine, poll_s=3600))

    class Handler(base):
        def setup(self):
            bump("tcp_connections")
            super().setup()

        def do_GET(self):
            if self.path == "/counts":
                with lock:
                    return self._json(200, dict(counts))
            return super().do_GET()

    server = getattr(inference_server, "InferenceHTTPServer", ThreadingHTTPServer)(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever(poll_interval=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(BENCH.parent), help="the checkout whose code runs (default: this one)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--front", type=int, help=argparse.SUPPRESS)  # internal: run the stub front on this port
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    model_dir = str(BENCH.parent / "var" / "models" / "smollm2-135m-instruct")
    sys.path.insert(0, str(repo))
    if args.front:
        return front(args.front, model_dir)

    data = Path(tempfile.mkdtemp(prefix="rl-bench-relay-"))
    front_port, web_port = free_port(), free_port()
    django_start(data, broker=None, PYTHONUNBUFFERED="1", REWARDLOOP_API_RATE="1000000/m",
                 REWARDLOOP_INFERENCE_URL=f"http://127.0.0.1:{front_port}")
    from django.contrib.auth.models import User

    from webapp.accounts.services import api_token_create
    from webapp.policies.services import membership_add, project_create

    project = project_create(slug="bench", title="bench", base_model_path=model_dir)
    user = User.objects.create_user("rater")
    membership_add(project=project, user=user)
    _, secret = api_token_create(user=user, name="bench")
    env = dict(os.environ, PYTHONPATH=str(repo))
    front_log = data / "front.log"
    procs = {
        "front": subprocess.Popen([sys.executable, __file__, "--repo", str(repo), "--front", str(front_port)], cwd=repo,
                                  env=env, stdout=front_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True),
        "web": subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "webapp.wsgi", "--bind",
                                 f"127.0.0.1:{web_port}", "--workers", "1", "--threads", "32", "--worker-class", "gthread"],
                                cwd=repo, env=env, stdout=(data / "web.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True),
    }
    import httpx2

    url = f"http://127.0.0.1:{web_port}/v1/chat/completions"
    body = {"model": "bench", "messages": [{"role": "user", "content": "Tell me about films"}], "max_tokens": 8,
            "stream": True}

    def one(http) -> None:
        with http.stream("POST", url, json=body, headers={"Authorization": f"Bearer {secret}"}) as response:
            if response.status_code != 200:
                raise RuntimeError(response.read())
            for _ in response.iter_lines():
                pass

    def counts() -> dict:
        return httpx2.get(f"http://127.0.0.1:{front_port}/counts", timeout=10).json()  # one connection itself

    def cpu() -> dict[str, float]:
        return {name: sum(cpu_seconds(process_tree(p.pid)).values()) for name, p in procs.items()}

    def burst(clients) -> None:
        barrier = threading.Barrier(len(clients))

        def go(http):
            barrier.wait()
            one(http)

        threads = [threading.Thread(target=go, args=(http,)) for http in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if "listening" in front_log.read_text():
                    one(httpx2)
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"servers did not start; logs in {data}")
            time.sleep(1)
        clients = [httpx2.Client(timeout=60) for _ in range(16)]
        burst(clients)  # the relay's pool fills
        n = args.requests
        counts_before, cpu_before = counts(), cpu()
        for _ in range(n):
            one(clients[0])
        counts_after, cpu_after = counts(), cpu()
        per_request = {f"{name}_cpu_ms": round(1000 * (cpu_after[name] - cpu_before[name]) / n, 2) for name in procs}
        per_request.update({f"front_{name}": round((counts_after[name] - counts_before[name] - (name == "tcp_connections")) / n, 2)
                            for name in ("statements", "db_connects", "tcp_connections")})
        bursts = []
        for _ in range(3):
            time.sleep(6)
            before = counts()["tcp_connections"]
            burst(clients)
            bursts.append(counts()["tcp_connections"] - before - 1)
        for http in clients:
            http.close()
    finally:
        for proc in procs.values():
            stop_group(proc)
    print(json.dumps({"bench": "serve_relay", "repo": str(repo), "requests": n, "per_request": per_request,
                      "new_front_connections_per_burst_of_16_after_6s_idle": bursts}))


if __name__ == "__main__":
    main()
