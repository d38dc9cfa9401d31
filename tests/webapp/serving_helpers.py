"""A real inference process (``manage.py serve_inference``) on the test database, for the serving tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from django.conf import settings

from tests.e2e.conftest import database_url

REPO = Path(__file__).resolve().parents[2]


class InferenceProcess:
    def __init__(self, tmp_path: Path, *args: str, secret: str | None = None, env: dict | None = None):
        self.secret = secret  # the API token generate() sends unless told otherwise
        self.log = tmp_path / "inference.log"
        environ = dict(os.environ)
        # The web app's SECRET_KEY and API rate, as in a deployment.
        environ.update(DATABASE_URL=database_url(), REWARDLOOP_DATA_DIR=str(settings.DATA_DIR),
                       REWARDLOOP_MODELS_DIR=str(settings.REWARDLOOP_MODELS_DIR), PYTHONUNBUFFERED="1",
                       DJANGO_SECRET_KEY=settings.SECRET_KEY, REWARDLOOP_API_RATE=settings.REWARDLOOP_API_RATE,
                       **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve_inference", "--port", "0", "--threads", "1", *args],
            cwd=REPO, env=environ, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", self.log.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the inference process exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"the inference process did not start:\n{self.log.read_text()[-3000:]}")

    def generate(self, body: dict, *, secret: str | None = None) -> list[dict]:
        """POST /generate with ``Authorization: Bearer <secret or self.secret>``; the NDJSON events, in order
        (a refusal's one JSON object is the one item)."""
        headers = {"Authorization": f"Bearer {secret or self.secret}"} if (secret or self.secret) else {}
        with httpx2.Client(timeout=120) as client, client.stream("POST", self.url + "/generate", json=body,
                                                                 headers=headers) as r:
            return [json.loads(line) for line in r.iter_lines() if line.strip()]

    def post(self, body: dict, headers: dict) -> httpx2.Response:
        """POST /generate with exactly these headers (no token unless given)."""
        return httpx2.post(self.url + "/generate", json=body, headers=headers, timeout=120)

    def health(self) -> dict:
        """``GET /healthz`` with this process's (global staff) token: the counters and loaded versions."""
        return self.healthz(f"Bearer {self.secret}").json()

    def healthz(self, authorization: str | None = None) -> httpx2.Response:
        """``GET /healthz`` with this ``Authorization`` header, or none."""
        headers = {"Authorization": authorization} if authorization else {}
        return httpx2.get(self.url + "/healthz", headers=headers, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Gunicorn:
    """The web app under gunicorn as the Procfile runs it (2 workers x 16 threads), on the test database."""

    def __init__(self, tmp_path: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp_path / "gunicorn.log"
        env = dict(os.environ)
        env.update(DATABASE_URL=database_url(), REWARDLOOP_DATA_DIR=str(settings.DATA_DIR),
                   REWARDLOOP_API_RATE=settings.REWARDLOOP_API_RATE, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "webapp.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--threads", "16", "--worker-class", "gthread"],
            cwd=REPO, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.url + "/healthz", timeout=10).status_code < 600:
                    return
            except httpx2.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"gunicorn did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def gunicorn(tmp_path):
    started = []

    def start() -> Gunicorn:
        started.append(Gunicorn(tmp_path))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def inference_process(tmp_path, make_user):
    """``inference_process(*args, env=None)`` -> a started :class:`InferenceProcess` (with ``env`` added to its
    environment; it inherits the test's ``SECRET_KEY`` and ``REWARDLOOP_API_RATE``); stopped after the test.

    Its ``generate`` sends the API token of a staff member of every project of the test (the
    inference process checks tokens and roles as the web app does)."""
    from webapp.accounts.services import api_token_create

    started = []
    caller = make_user("inference-caller", staff=True)
    _, secret = api_token_create(user=caller, name="inference tests")

    def start(*args: str, env: dict | None = None) -> InferenceProcess:
        process = InferenceProcess(tmp_path, *args, secret=secret, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def fresh_hour_window() -> None:
    """Sleep past the top of the hour when it is under a minute away (for tests of per-hour rates)."""
    left = 3600 - time.time() % 3600
    if left < 60:
        time.sleep(left + 0.5)


def assert_throttled(response) -> dict:
    """A 429 in OpenAI's error shape (``rate_limit_error``) with a ``Retry-After`` in seconds; its error object."""
    assert response.status_code == 429, response.content
    error = json.loads(response.content)["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded"), error
    assert 1 <= int(response.headers["Retry-After"]) <= 3600
    return error


def redis_url() -> str | None:
    """A Redis to share a cache through: ``REWARDLOOP_CACHE_URL``, else a ``redis://`` ``CELERY_BROKER_URL``."""
    for name in ("REWARDLOOP_CACHE_URL", "CELERY_BROKER_URL"):
        if os.environ.get(name, "").startswith("redis://"):
            return os.environ[name]
    return None
