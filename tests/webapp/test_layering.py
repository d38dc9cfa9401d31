"""Dependency direction: training → annotation → policies → pgcore; nothing points back up."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_lower_layers_never_name_an_upper_apps_task_or_module_by_string():
    upper = {"webapp/policies": ("annotation", "training"), "pgcore": ("webapp",)}
    offenders = []
    for folder, names in upper.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"[\"']webapp\.(%s)\b" % "|".join(names), line) or (
                    folder == "pgcore" and re.search(r"[\"']webapp\b", line)
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def _another_version(project):
    """v1 of ``project`` on the base weights: serving the version already served is refused."""
    from webapp.policies.models import ModelVersion

    return ModelVersion.objects.create(
        project=project, number=1, kind="full", weights_path=project.base_model_path, parent=project.served_version
    )


def test_serving_another_version_queues_annotations_pool_refill_though_policies_never_names_it(
    project, monkeypatch, django_capture_on_commit_callbacks
):
    from webapp.celery import app
    from webapp.policies import services as policy_services

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kw: sent.append((name, args, kw.get("queue"))))
    v1 = _another_version(project)
    with django_capture_on_commit_callbacks(execute=True):
        policy_services.version_promote(version=v1)
    assert sent[0] == ("webapp.annotation.tasks.pool_refill", [project.pk], "generation")
    # Training answers the same signal: the served version was never measured on held-out prompts.
    assert sent[1:] == [("webapp.training.tasks.version_samples_ensure", [v1.pk], None)]


def test_a_down_broker_does_not_fail_a_promotion(project, monkeypatch, django_capture_on_commit_callbacks):
    from webapp.celery import app
    from webapp.policies import services as policy_services

    def down(*args, **kwargs):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(app, "send_task", down)
    v1 = _another_version(project)
    with django_capture_on_commit_callbacks(execute=True):
        version = policy_services.version_promote(version=v1)
    project.refresh_from_db()
    assert project.served_version_id == version.pk == v1.pk
