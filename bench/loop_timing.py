"""How long the loop takes, as a user meets it: `make run` → first rateable item →
16 ratings → a new version serves its first completion.

Starts ``make run`` in ``--repo`` (a fresh data directory by default, so the
SmolLM2 conversion and the first pool are included), drives the app over HTTP
as two annotators would (log in, fetch the card, post a rating), and polls
``/healthz``. Ratings are chosen by VADER sentiment of the completion, like a
person who wants upbeat replies. Prints one JSON object.

    .venv/bin/python bench/loop_timing.py --repo . --port 8811 --train-interval 15

The scheduled run starts at beat's next tick after the 16th rating, so the
``--train-interval`` (``REWARDLOOP_TRAIN_INTERVAL_S``) bounds that wait; the
JSON reports it next to the timings. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from django_env import stop_group  # noqa: E402

PASSWORD = "bench-pass-1234"


class Session:
    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def csrf(self) -> str:
        return next((c.value for c in self.jar if c.name == "csrftoken"), "")

    def get(self, path: str, headers: dict | None = None) -> str:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        with self.opener.open(request, timeout=30) as response:
            return response.read().decode()

    def post(self, path: str, data: dict, headers: dict | None = None) -> str:
        body = urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(
            self.base + path, data=body, headers={"X-CSRFToken": self.csrf(), **(headers or {})}
        )
        with self.opener.open(request, timeout=30) as response:
            return response.read().decode()

    def login(self, username: str) -> None:
        self.get("/accounts/login/")
        self.post("/accounts/login/", {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": self.csrf()})


def healthz(base: str) -> dict | None:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            return json.loads(response.read())
    except Exception:  # noqa: BLE001 - not up yet
        return None


def card(session: Session) -> tuple[int, str] | None:
    # A page load writes nothing: the next item is leased by POST (the card the page asks for as it loads).
    html = session.post("/p/demo/annotate/next/", {}, {"HX-Request": "true"})
    match = re.search(r'data-completion="(\d+)"', html)
    if not match:
        return None
    text = re.search(r'<div class="text completion">(.*?)(?:<span class="cut"|</div>)', html, re.S)
    return int(match.group(1)), (text.group(1) if text else "")


def wait(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="checkout to run `make run` in")
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--data-dir", help="REWARDLOOP_DATA_DIR (default: a new temporary folder)")
    parser.add_argument("--models-dir", help="REWARDLOOP_MODELS_DIR (default: inside the data dir, so cold)")
    parser.add_argument("--train-interval", type=int, default=15, help="beat's training check interval, seconds")
    parser.add_argument("--ratings", type=int, default=16)
    args = parser.parse_args()

    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="rl-loop-"))
    env = dict(
        os.environ,
        PORT=str(args.port),
        DEMO_PASSWORD=PASSWORD,
        REWARDLOOP_DATA_DIR=str(data_dir),
        REWARDLOOP_TRAIN_INTERVAL_S=str(args.train_interval),
    )
    if args.models_dir:
        env["REWARDLOOP_MODELS_DIR"] = args.models_dir
    base = f"http://127.0.0.1:{args.port}"
    log = open(data_dir / "make-run.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(["make", "run"], cwd=args.repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    result: dict = {"train_interval_s": args.train_interval, "ratings": args.ratings, "data_dir": str(data_dir)}
    try:
        wait(lambda: healthz(base), 1200, "/healthz")
        result["seconds_make_run_to_healthy"] = round(time.monotonic() - t0, 1)
        annotators = [Session(base), Session(base)]
        annotators[0].login("annotator1")
        annotators[1].login("annotator2")
        wait(lambda: card(annotators[0]), 1200, "the first rateable item", poll=1)
        result["seconds_make_run_to_first_rateable_item"] = round(time.monotonic() - t0, 1)

        rated = 0
        while rated < args.ratings:
            session = annotators[rated % 2]
            item = wait(lambda s=session: card(s), 600, "an item to rate", poll=1)
            compound = vader.polarity_scores(item[1])["compound"]
            score = min(5, max(1, round(3 + 2 * compound)))
            session.post(f"/p/demo/annotate/{item[0]}/rate/", {"score": score}, {"HX-Request": "true"})
            rated += 1
        t16 = time.monotonic()

        def served(version):
            h = healthz(base)
            return h and h["projects"]["demo"]["served_version"] == version and h

        wait(lambda: served(1), 1800, "version 1 to be served", poll=1)
        result["seconds_last_rating_to_v1_served"] = round(time.monotonic() - t16, 1)
        wait(lambda: (h := served(1)) and h["projects"]["demo"]["pool_size"] > 0, 900, "a completion from v1", poll=1)
        result["seconds_last_rating_to_first_v1_completion"] = round(time.monotonic() - t16, 1)
    finally:
        stop_group(proc)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
