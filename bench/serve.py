"""Serving throughput: streaming clients through the web app and the inference process vs pgcore offline.

Starts, on a fresh SQLite database under a temporary data directory, the inference process
(``manage.py serve_inference``) and gunicorn (the web app), creates a project on the model and
an API token, then for 1, 4 and 16 concurrent clients: each client sends ``--requests``
streaming ``POST /v1/chat/completions`` in a row (closed loop, ``max_tokens=--new-tokens``,
temperature 1, ``stream_options.include_usage`` for the exact token count), through its own
HTTP client made before the level starts and kept (keep-alive), as an API client is used. Reported per level:

- ``tok_s``: completion tokens of every request over the level's wall time (aggregate);
- ``ttft_ms_p50`` / ``ttft_ms_p95``: time from sending a request to its first content chunk;
- ``offline_tok_s``: ``pgcore.rollout.generate`` in this process (same model, same precision,
  same torch threads, same prompts rendered with the chat template) at batch = the number of
  clients, the same new-token cap, repeated to about the same number of tokens;
- ``ratio``: ``tok_s / offline_tok_s`` (the issue's goal: >= 0.7 at 16 clients, p95 TTFT < 1 s);
- at the largest level, ``timeline`` (:func:`timeline_join`: each request's arrival, admission
  into the running batch, first token and end, the engine's steps with their kind and rows,
  and the parts of the time to first token) and ``ttft_steps_p50``/``ttft_steps_p95`` (time to
  first token in engine steps, which the machine's load does not stretch) and
  ``ttft_cpu_ms_p50``/``ttft_cpu_ms_p95`` (the inference process's CPU milliseconds from a
  request's arrival there to its first token, which the load stretches far less than wall time);
- ``cpu_s``: CPU seconds (user + system, all threads) the level took in the inference process,
  the web app (gunicorn's master and worker) and this process's client threads, so the
  cost can be read apart from the machine's load.

``--no-prefix-cache`` runs the inference process without its cached chat-template prefix
(the engine before prefix caching), for comparisons within one run.

A/B series: ``--hold-ms 250,0 --repeat K`` starts fresh servers for each run and alternates the
inference process's ``--hold-ms`` values (250, 0, 250, 0, ... K times each), each run with its
own offline figure; it prints one JSON object ``{"bench": "serve-series", "runs": [each run's
object as above], "by_hold_ms": {value: {"ttft_ms_p95": [...], "ratio": [...]}}}`` (at the
largest level, in run order). Each run also has ``tcp``: the machine's TCP listen-queue
overflows and SYN retransmits during its served levels (``/proc/net/netstat``; a late
handshake costs its client 1 s).

The served and the offline figures are measured one after the other in the same run (never
at once). Prints ONE JSON object on stdout; progress goes to stderr. Not a test.

Usage: python bench/serve.py [--model-dir var/models/smollm2-135m-instruct] [--clients 1,4,16]
       [--requests 3] [--new-tokens 32] [--threads 2] [--window-ms 5] [--no-prefix-cache]
       [--hold-ms 250[,0...]] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from annotate_load import cpu_seconds, process_tree  # noqa: E402
from django_env import django_start, stop_group  # noqa: E402

PROMPTS = [
    f"Continue this movie review in two sentences: {opening}"
    for opening in (
        "The gorgeously elaborate continuation of the trilogy is so huge that",
        "A quiet, patient film about grief that", "I walked out of this comedy after", "The cast does what it can, but",
        "Its final act is a masterclass in", "Nothing about this remake", "The cinematography alone makes",
        "For a debut, the director shows", "The script wastes a premise that", "Two hours felt like",
        "The soundtrack carries scenes that", "As a family film it", "The villain is the only character who",
        "Half thriller, half satire, it", "The dialogue sparkles when", "By the end I no longer cared",
    )
]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stream_once(http, url: str, secret: str, prompt: str, new_tokens: int, times: dict | None = None) -> tuple[float, int]:
    """One streaming chat completion through ``http`` (an ``httpx2.Client``, or the module):
    (seconds to the first content chunk, completion tokens). ``times`` (if given) gets
    ``sent``, ``first_chunk``, ``end`` (``time.monotonic()`` seconds), ``prompt_tokens`` and ``id``
    (the answer's id)."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": new_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    start, sent = time.perf_counter(), time.monotonic()
    ttft, first, tokens, prompt_tokens, answer_id = None, None, 0, None, None
    with http.stream("POST", url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            answer_id = answer_id or chunk.get("id")
            if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                ttft, first = time.perf_counter() - start, time.monotonic()
            if chunk.get("usage"):
                tokens, prompt_tokens = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
    if times is not None:
        end = time.monotonic()
        times.update(sent=sent, first_chunk=first if first is not None else end, end=end, prompt_tokens=prompt_tokens,
                     id=answer_id)
    return (ttft if ttft is not None else time.perf_counter() - start), tokens


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each named process and its descendants."""
    return {name: sum(cpu_seconds(process_tree(pid)).values()) for name, pid in roots.items()}


def served_level(httpx2, url, secret, clients: int, requests: int, new_tokens: int, roots: dict[str, int],
                 timeline_url: str | None = None) -> dict:
    """One level; with ``timeline_url`` (the inference process's ``/debug/timeline``) the row
    gets ``"timeline"`` (:func:`timeline_join`) and ``ttft_steps_p50``/``ttft_steps_p95``."""
    ttfts, tokens, errors, sent = [], [], [], []
    barrier = threading.Barrier(clients)

    def client(i):
        # Made before the clock starts and kept, as an API client keeps its connection pool: making
        # an httpx client loads an SSL context (~20 ms of CPU), which is no part of the server's TTFT.
        http = httpx2.Client(timeout=600)
        barrier.wait()
        for r in range(requests):
            try:
                times = {"client": i}
                t, n = stream_once(http, url, secret, PROMPTS[(i * requests + r) % len(PROMPTS)], new_tokens, times)
                ttfts.append(t)
                tokens.append(n)
                sent.append(times)
            except Exception as exc:  # counted, not fatal: the JSON says how many failed
                errors.append(repr(exc))
        http.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    cpu_before, bench_before, start, level_start = tree_cpu(roots), time.process_time(), time.perf_counter(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = {name: round(used - cpu_before[name], 2) for name, used in tree_cpu(roots).items()}
    cpu["clients"] = round(time.process_time() - bench_before, 2)
    row = {"cpu_s": cpu,"clients": clients, "requests": len(tokens), "errors": len(errors), "tokens": sum(tokens),
           "wall_s": round(wall, 2), "tok_s": round(sum(tokens) / wall, 2),
           "ttft_ms_p50": round(1000 * percentile(ttfts, 0.5), 1), "ttft_ms_p95": round(1000 * percentile(ttfts, 0.95), 1)}
    if timeline_url is not None:
        engine = httpx2.get(timeline_url, params={"since": level_start}, headers={"Authorization": f"Bearer {secret}"},
                            timeout=30).json()
        row["timeline"] = timeline_join(sent, engine, level_start)
        steps = [r["steps_to_first_token"] for r in row["timeline"]["requests"] if r.get("steps_to_first_token")]
        row["ttft_steps_p50"], row["ttft_steps_p95"] = percentile(steps, 0.5), percentile(steps, 0.95)
        cpu = [r["cpu_ms_to_first_token"] for r in row["timeline"]["requests"] if r.get("cpu_ms_to_first_token") is not None]
        row["ttft_cpu_ms_p50"], row["ttft_cpu_ms_p95"] = round(percentile(cpu, 0.5), 1), round(percentile(cpu, 0.95), 1)
    return row


def timeline_join(sent: list[dict], engine: dict, origin: float) -> dict:
    """Each client request beside the engine's record of it, and the engine's steps; ms after ``origin``.

    ``sent``: the clients' requests (:func:`stream_once`'s ``times`` plus ``client``);
    ``engine``: the inference process's ``/debug/timeline``. A client request is paired with the
    engine's request under its answer id (the web app sends it along); where the engine has no
    id (an older inference process), with the earliest unpaired engine request of the same
    prompt length received after it was sent, in order of sending, so two equal-length prompts
    sent at the same moment may swap.

    Returns ``{"requests": [...], "steps": [{"start", "end", "kind", "rows"}], "ttft_ms_parts"}``:
    a request has ``client``, ``sent``, ``received`` (by the inference process), ``submitted``
    (to its engine, after the token check and tokenizing), ``admitted`` (into the running
    batch), ``first_token`` (drawn), ``first_chunk`` (read by the client), ``end`` and
    ``steps_to_first_token`` (engine steps that ended between its submission and its first
    token, its own prefill included) and ``cpu_ms_to_first_token`` (CPU the inference process
    spent, all its threads, from the request's arrival there to its first token). ``ttft_ms_parts``: the median and the slowest 5% mean of
    each part of the time to first token (web in: sent -> received; front: received ->
    submitted; queue: submitted -> admitted; engine: admitted -> first token; out: first token
    -> first chunk).
    """
    def ms(t):
        return None if t is None else round(1000 * (t - origin), 1)

    free = sorted(engine["requests"], key=lambda r: r["received"] or r["submitted"])
    rows = []
    for c in sorted(sent, key=lambda c: c["sent"]):
        match = next((e for e in free if e.get("id") is not None and e["id"] == c.get("id")), None)
        if match is None:
            match = next((e for e in free if e.get("id") is None and e["prompt_tokens"] == c["prompt_tokens"]
                          and (e["received"] or e["submitted"]) >= c["sent"] - 0.001), None)
        row = {"client": c["client"], "sent": ms(c["sent"]), "first_chunk": ms(c["first_chunk"]), "end": ms(c["end"]),
               "prompt_tokens": c["prompt_tokens"]}
        if match is not None:
            free.remove(match)
            row.update(received=ms(match["received"]), submitted=ms(match["submitted"]), admitted=ms(match["admitted"]),
                       first_token=ms(match["first_token"]), engine_end=ms(match["end"]),
                       steps_to_first_token=match["steps_to_first_token"],
                       cpu_ms_to_first_token=None if match.get("cpu_to_first_token") is None
                       else round(1000 * match["cpu_to_first_token"], 1))
        rows.append(row)
    parts = {"web_in": ("sent", "received"), "front": ("received", "submitted"), "queue": ("submitted", "admitted"),
             "engine": ("admitted", "first_token"), "out": ("first_token", "first_chunk")}
    slowest = sorted((r for r in rows if "first_token" in r), key=lambda r: r["first_chunk"] - r["sent"])
    tail = slowest[-max(1, len(slowest) // 20):]
    summary = {}
    for name, (a, b) in parts.items():
        values = [r[b] - r[a] for r in slowest if r.get(a) is not None and r.get(b) is not None]
        tail_values = [r[b] - r[a] for r in tail if r.get(a) is not None and r.get(b) is not None]
        summary[name] = {"p50": round(percentile(values, 0.5), 1),
                         "slowest_5pct_mean": round(statistics.fmean(tail_values), 1) if tail_values else None}
    steps = [{"start": ms(s["start"]), "end": ms(s["end"]), "kind": s["kind"], "rows": s["rows"]} for s in engine["steps"]]
    return {"requests": rows, "steps": steps, "ttft_ms_parts": summary}


def offline_level(policy, clients: int, requests: int, new_tokens: int) -> dict:
    from pgcore.rollout import generate

    generate(policy, PROMPTS[:clients], max_new_tokens=2, batch_size=clients)  # warm (sampling copy built)
    tokens, start = 0, time.perf_counter()
    for r in range(requests):
        prompts = [PROMPTS[(i * requests + r) % len(PROMPTS)] for i in range(clients)]
        rollouts = generate(policy, prompts, max_new_tokens=new_tokens, batch_size=clients)
        tokens += sum(len(x.completion_ids) for x in rollouts)
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 2)}


def tcp_counters() -> dict[str, int]:
    """The machine's (network namespace's) TCP listen-queue overflows and SYN retransmits so far."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]))) if len(lines) >= 2 else {}
    return {"listen_overflows": values.get("ListenOverflows", 0), "syn_retrans": values.get("TCPSynRetrans", 0)}


def served_run(args, levels: list[int], hold_ms: float | None, data: Path, secret: str) -> tuple[list[dict], dict]:
    """Start the inference process (``--hold-ms hold_ms``; None: its default) and gunicorn, warm them,
    run every level, stop them; the level rows, and the :func:`tcp_counters` the levels added."""
    import httpx2

    env = dict(os.environ)  # the servers run on the same throwaway set-up
    inference_port, web_port = free_port(), free_port()
    env["REWARDLOOP_INFERENCE_URL"] = f"http://127.0.0.1:{inference_port}"
    python = sys.executable
    logs = {name: (data / f"{name}-{inference_port}.log").open("w") for name in ("inference", "web")}
    procs = [
        subprocess.Popen([python, "manage.py", "serve_inference", "--port", str(inference_port), "--threads",
                          str(args.threads), "--window-ms", str(args.window_ms)] + ["--no-prefix-cache"] * args.no_prefix_cache
                         + ([] if hold_ms is None else ["--hold-ms", str(hold_ms)]), cwd=REPO, env=env,
                         stdout=logs["inference"], stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([str(Path(python).with_name("gunicorn")), "webapp.wsgi", "--bind", f"127.0.0.1:{web_port}",
                          "--workers", "1", "--threads", "32", "--worker-class", "gthread"], cwd=REPO, env=env,
                         stdout=logs["web"], stderr=subprocess.STDOUT, start_new_session=True),
    ]
    roots = {"inference": procs[0].pid, "web": procs[1].pid}
    url = f"http://127.0.0.1:{web_port}/v1/chat/completions"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if "listening" in Path(logs["inference"].name).read_text() and stream_once(httpx2, url, secret, PROMPTS[0], 4):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"servers did not start; logs in {data}")
            time.sleep(1)
        log("servers up; warming the batch sizes")
        for clients in levels:
            served_level(httpx2, url, secret, clients, 1, 4, roots)
        served = []
        timeline_url = f"http://127.0.0.1:{inference_port}/debug/timeline"
        tcp_before = tcp_counters()
        for clients in levels:
            served.append(served_level(httpx2, url, secret, clients, args.requests, args.new_tokens, roots,
                                       timeline_url if clients == max(levels) else None))
            log("served", {k: v for k, v in served[-1].items() if k != "timeline"})
        tcp_after = tcp_counters()
    finally:
        for p in procs:
            if p.poll() is None:
                stop_group(p, timeout=30)
    return served, {name: tcp_after[name] - tcp_before[name] for name in tcp_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(REPO / "var" / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=3, help="requests per client per level")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, inference process and offline alike")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--hold-ms", default=None,
                        help="the inference process's --hold-ms (default: its own default); several, comma-separated "
                             "(250,0): the runs alternate between them")
    parser.add_argument("--repeat", type=int, default=1, help="runs per --hold-ms value (fresh servers each run)")
    parser.add_argument("--no-prefix-cache", action="store_true", help="the inference process prefills every prompt in full")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    holds = [None] if args.hold_ms is None else [float(h) for h in args.hold_ms.split(",")]
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    data = Path(tempfile.mkdtemp(prefix="rl-bench-serve-"))
    django_start(data, broker=None, PYTHONUNBUFFERED="1", REWARDLOOP_API_RATE="1000000/m",
                 OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    from django.contrib.auth.models import User

    from webapp.accounts.services import api_token_create
    from webapp.policies.services import project_create

    project_create(slug="bench", title="bench", base_model_path=args.model_dir)
    _, secret = api_token_create(user=User.objects.create_user("bench", is_staff=True), name="bench")

    runs, policy = [], None
    for k in range(args.repeat):
        for hold_ms in holds:
            log(f"run {len(runs) + 1} of {args.repeat * len(holds)}: hold_ms={hold_ms}")
            load_start = os.getloadavg()
            served, tcp = served_run(args, levels, hold_ms, data, secret)
            if policy is None:  # the offline figure in this process, the servers stopped
                import torch

                from pgcore.policy import load_policy

                torch.set_num_threads(args.threads)
                policy = load_policy(args.model_dir)
            for row in served:
                offline = offline_level(policy, row["clients"], args.requests, args.new_tokens)
                log("offline", row["clients"], offline)
                row["offline_tok_s"] = offline["tok_s"]
                row["offline_tokens"] = offline["tokens"]
                row["ratio"] = round(row["tok_s"] / offline["tok_s"], 3) if offline["tok_s"] else None
            runs.append({
                "bench": "serve", "model": Path(args.model_dir).name, "new_tokens": args.new_tokens,
                "requests_per_client": args.requests, "threads": args.threads, "window_ms": args.window_ms,
                "prefix_cache": not args.no_prefix_cache, "hold_ms": hold_ms,
                "cpu": platform.processor() or platform.machine(),
                "loadavg_start_end": [list(load_start), list(os.getloadavg())], "tcp": tcp, "levels": served,
                "goal": "ratio >= 0.7 and ttft_ms_p95 < 1000 at 16 clients",
            })
    if len(runs) == 1:
        print(json.dumps(runs[0]))
        return
    by_hold: dict[str, dict[str, list]] = {}
    for run in runs:
        top = max(run["levels"], key=lambda row: row["clients"])
        entry = by_hold.setdefault(str(run["hold_ms"]), {"ttft_ms_p95": [], "ratio": []})
        entry["ttft_ms_p95"].append(top["ttft_ms_p95"])
        entry["ratio"].append(top["ratio"])
    print(json.dumps({"bench": "serve-series", "clients": max(levels), "repeat": args.repeat,
                      "hold_ms": holds, "by_hold_ms": by_hold, "runs": runs}))


if __name__ == "__main__":
    main()
