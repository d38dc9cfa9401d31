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

    def start(self, name: str, *args: str, env: dict | None = None) -> Path:
        """Start ``celery -A webapp <args>`` as ``name``; ``env`` adds to (or overrides) :meth:`env`."""
        log = self.tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", *args],
            cwd=REPO,
            env={**self.env(), **(env or {})},
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

    def wait_until(self, predicate, timeout: float, what: str, poll: float = 0.25):
        """Poll ``predicate`` until it returns something truthy; fail with every process's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

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


# --- Browser (Python Playwright driving Debian's chromium; never a downloaded browser) ---

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: apt-get install chromium (.ci/run does this)")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # tests make around it are still plain synchronous calls.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def login_page(browser, live_server):
    """``login_page(user, password="pw-12345678", width=1280)`` -> a Playwright page, logged in."""
    contexts = []

    def login(user, password="pw-12345678", width=1280, height=900):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: (_ for _ in ()).throw(AssertionError(f"a dialog fired: {dialog.message}")))
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        return page

    yield login
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot():
    """``screenshot(page, name)`` saves ``test-artifacts/NAME.png`` (full page) and returns its path."""

    def save(page, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save
