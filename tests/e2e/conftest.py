"""Real Celery processes against the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """A DATABASE_URL naming the database this test session uses (the test database)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class Processes:
    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url(),
            REWARDLOOP_DATA_DIR=str(settings.DATA_DIR),
            REWARDLOOP_MODELS_DIR=str(settings.REWARDLOOP_MODELS_DIR),
            REWARDLOOP_TORCH_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, name: str, *args: str) -> Path:
        log = self.tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", *args],
            cwd=REPO,
            env=self.env(),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc, log))
        return log

    def wait_for_log(self, log: Path, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in log.read_text(errors="replace"):
                return
            for name, proc, plog in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{plog.read_text()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"{text!r} not seen in {log.name} within {timeout} s:\n{log.read_text()[-3000:]}")

    def logs(self) -> str:
        return "\n".join(f"===== {name}\n{log.read_text(errors='replace')[-4000:]}" for name, _, log in self.procs)

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def celery_processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop()
