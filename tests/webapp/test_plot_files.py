"""Plots are drawn once, by a worker, when their data change; web requests serve the file and never import matplotlib."""

import re
import sys

import pytest

from webapp.annotation.models import Rating
from webapp.policies import plotfiles
from webapp.policies import tasks as policy_tasks
from webapp.policies.models import ModelVersion
from webapp.training.models import TrainingRun

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def plots_dir(tmp_path, settings):
    settings.DATA_DIR = tmp_path
    return tmp_path / "plots"


@pytest.fixture
def sent(monkeypatch):
    """What the web process queued for the workers: (task name, args, queue)."""
    from webapp.celery import app

    queued = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, queue=None, **kw: queued.append((name, args, queue)))
    return queued


@pytest.fixture
def site(project, annotator, make_completion):
    for i in range(4):
        Rating.objects.create(completion=make_completion(project, text=f"c{i}"), annotator=annotator, score=1 + i)
    ModelVersion.objects.filter(pk=project.served_version_id).update(kl_to_base=0.0)
    curve = [{"step": s, "epoch": 1 + s // 3, "losses/pg_loss": 0.1 * s, "objective/kl": 0.01 * s} for s in range(1, 7)]
    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=project.served_version, status="succeeded", curve=curve
    )
    return {"project": project, "run": run}


def _pages(project, run):
    base = f"/staff/p/{project.slug}"
    return [f"{base}/runs/{run.pk}/", f"{base}/versions/"]


def _images(body: str) -> list[str]:
    return [src.replace("&amp;", "&") for src in re.findall(r'<img src="([^"]+\.png[^"]*)"', body)]


def _work_off(sent):
    """Be the generation worker: run every plot task queued so far."""
    while sent:
        name, args, queue = sent.pop(0)
        assert name == plotfiles.DRAW_TASK_NAME and queue == "generation"
        policy_tasks.plot_draw(*args)


class _NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"a web request imported {name}")
        return None


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Forget matplotlib for the test and refuse to import it (restored afterwards)."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoMatplotlib(), *sys.meta_path])


def test_rendering_the_staff_pages_and_their_plots_never_imports_matplotlib(
    staff_client, site, plots_dir, sent, no_matplotlib
):
    for page in _pages(site["project"], site["run"]):
        response = staff_client.get(page)
        assert response.status_code == 200
        images = _images(response.content.decode())
        assert images
        for src in images:
            image = staff_client.get(src)
            assert image.status_code == 200 and image.content.startswith(PNG_MAGIC)
    assert "matplotlib" not in sys.modules
    assert sent  # the drawing went to a worker


def test_a_plot_is_drawn_once_by_the_worker_and_then_served_as_a_file(staff_client, site, plots_dir, sent):
    versions = f"/staff/p/{site['project'].slug}/versions/"
    page = staff_client.get(versions).content.decode()
    assert 'hx-trigger="every 2s"' in page  # waits for the drawings
    first = [staff_client.get(src) for src in _images(page)]
    assert [r["X-Plot"] for r in first] == ["drawing", "drawing"]
    assert len(sent) == 2  # once per plot, however often it is asked for
    _work_off(sent)
    drawn = sorted(p.name for p in plots_dir.glob("*.png"))
    assert len(drawn) == 2
    page = staff_client.get(versions).content.decode()
    assert "every 2s" not in page
    for src in _images(page):
        image = staff_client.get(src)
        assert image["X-Plot"] == "ready" and image.content.startswith(PNG_MAGIC)
        assert image.content != plotfiles.PLACEHOLDER.read_bytes()
        assert "immutable" in image["Cache-Control"]
    assert sent == []  # nothing drawn twice
    assert sorted(p.name for p in plots_dir.glob("*.png")) == drawn


def test_new_data_is_a_new_plot_file_so_an_old_drawing_is_never_served_for_it(staff_client, site, plots_dir, sent):
    url = f"/staff/p/{site['project'].slug}/versions/plots/kl.png"
    staff_client.get(url)
    _work_off(sent)
    assert staff_client.get(url)["X-Plot"] == "ready"
    old = staff_client.get(url).content
    ModelVersion.objects.filter(pk=site["project"].served_version_id).update(kl_to_base=0.5)  # version re-evaluated
    meanwhile = staff_client.get(url)
    assert meanwhile["X-Plot"] == "stale" and meanwhile.content == old  # the last drawing, never a blank
    _work_off(sent)
    new = staff_client.get(url)
    assert new["X-Plot"] == "ready" and new.content != old


def test_files_no_longer_drawn_are_pruned_by_the_worker_and_drawn_again_when_asked(
    staff_client, site, plots_dir, sent
):
    url = f"/staff/p/{site['project'].slug}/versions/plots/kl.png"
    staff_client.get(url)
    _work_off(sent)
    assert plotfiles.plots_prune(older_than_s=-1) >= 2  # the PNG and its slot pointer
    assert staff_client.get(url)["X-Plot"] == "drawing"
    _work_off(sent)
    assert staff_client.get(url)["X-Plot"] == "ready"


def test_a_finished_runs_page_polls_until_its_curves_are_drawn(staff_client, site, plots_dir, sent):
    project, run = site["project"], site["run"]
    page = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert 'hx-trigger="every 2s"' in page
    _work_off(sent)
    page = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert "hx-trigger" not in page
    curves = staff_client.get(_images(page)[0])
    assert curves["X-Plot"] == "ready" and curves.content.startswith(PNG_MAGIC)


def test_a_runs_end_has_its_plots_drawn_so_the_pages_find_them_ready(staff_client, site, plots_dir, sent):
    from webapp.training import services as training_services

    project, run = site["project"], site["run"]
    training_services.run_plots_queue(run_id=run.pk)  # what the last step (or a failure, a cancel) calls
    slots = sorted(args[2] for _name, args, _queue in sent)
    assert slots == sorted([f"run-{run.pk}-curves", f"project-{project.pk}-ratings", f"project-{project.pk}-kl"])
    _work_off(sent)

    for url in (f"/staff/p/{project.slug}/runs/{run.pk}/", f"/staff/p/{project.slug}/versions/"):
        page = staff_client.get(url).content.decode()
        assert "every 2s" not in page, url  # nothing left to wait for
        assert all(staff_client.get(src)["X-Plot"] == "ready" for src in _images(page)), url
    assert sent == []  # the first view drew nothing


def test_a_down_broker_still_answers_the_placeholder_and_asks_again_next_time(
    staff_client, site, plots_dir, monkeypatch
):
    from webapp.celery import app

    attempts = []

    def down(*args, **kwargs):
        attempts.append(args)
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(app, "send_task", down)
    url = f"/staff/p/{site['project'].slug}/versions/plots/kl.png"
    for _ in range(2):
        response = staff_client.get(url)
        assert response.status_code == 200 and response["X-Plot"] == "drawing"
    assert len(attempts) == 2
