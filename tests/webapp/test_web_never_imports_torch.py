"""Web processes never load torch (DESIGN.md: the model lives in workers and the inference process).

A fresh interpreter boots the web app, imports its URLconf (every app's views and API
modules), serves the main pages, annotates, presses Train now and Fit now, and calls the
REST API; ``torch`` must never enter ``sys.modules``. Run in a subprocess because the test
process itself has imported torch long before.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serving_the_web_app_never_imports_torch(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # nothing here loads a model: a config is all a project needs
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "REWARDLOOP_CACHE_URL")}
    env.update(REWARDLOOP_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("web_torch_probe.py")), str(model_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [name for name, _ in report["steps"]] == [
        "setup and migrate", "URLconf, views and API", "GET the main pages", "annotate: next item and rate",
        "Train now", "Fit reward model now", "REST API",
        "OpenAI-compatible routes",
    ]
    assert report["steps"] == [[name, False] for name, _ in report["steps"]], "".join(report["first_import"])
