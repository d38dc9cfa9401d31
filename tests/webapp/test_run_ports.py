"""``make run``'s ports: the inference process listens on the web port + 1 (or REWARDLOOP_INFERENCE_PORT),
and the web app finds it there; one port for both is refused before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDLOOP_INFERENCE_")}
    env.pop("PORT", None)
    env.update(extra)
    return env


def _make_run_dry(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "run", *args], cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=120)


def test_make_run_puts_the_inference_process_on_the_next_port():
    default = _make_run_dry()
    assert default.returncode == 0, default.stderr
    assert "http://127.0.0.1:8000/ (the inference process listens on 127.0.0.1:8001" in default.stdout
    moved = _make_run_dry("PORT=8001")
    assert moved.returncode == 0, moved.stderr
    assert "http://127.0.0.1:8001/ (the inference process listens on 127.0.0.1:8002" in moved.stdout
    assert "honcho start -f Procfile -p 8001" in moved.stdout
    chosen = _make_run_dry("PORT=8001", REWARDLOOP_INFERENCE_PORT="9100")
    assert "listens on 127.0.0.1:9100" in chosen.stdout


def test_one_port_for_web_and_inference_is_refused():
    clash = _make_run_dry("PORT=8001", "REWARDLOOP_INFERENCE_PORT=8001")
    assert clash.returncode != 0
    assert "PORT and REWARDLOOP_INFERENCE_PORT are both 8001" in clash.stderr
    assert "honcho" not in clash.stdout


def test_the_procfile_and_the_web_app_read_the_same_port():
    procfile = (REPO / "Procfile").read_text()
    assert "serve_inference --port ${REWARDLOOP_INFERENCE_PORT:-8001}" in procfile
    probe = "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'webapp.settings'); django.setup(); " \
            "from django.conf import settings; print(settings.REWARDLOOP_INFERENCE_URL)"

    def url(**env) -> str:
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=_env(**env), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert url() == "http://127.0.0.1:8001"
    assert url(REWARDLOOP_INFERENCE_PORT="8002") == "http://127.0.0.1:8002"
    assert url(REWARDLOOP_INFERENCE_PORT="8002", REWARDLOOP_INFERENCE_URL="http://10.0.0.5:9000") == \
        "http://10.0.0.5:9000"
