"""The staff control room in a real browser, with a real Celery worker training the tiny model.

Staff press "Train now", watch the run's progress update by itself, see it
succeed, roll back to the previous version in one click, and the annotator
page then serves completions written by that version.
"""

import time
import zipfile

import pytest

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion
from webapp.policies.models import AuditEvent
from webapp.training.models import TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]



def image_loaded(img, timeout=15) -> bool:
    """Whether the <img> finished loading a picture within ``timeout`` s (CSP forbids wait_for_function)."""
    deadline = time.monotonic() + timeout
    while img.evaluate("img => img.naturalWidth") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return img.evaluate("img => img.naturalWidth") > 0


def test_staff_train_watch_promote_previous_and_annotators_get_that_version(
    login_page, live_server, project, make_user, staff_user, annotator, celery_processes, screenshot
):
    # v0 wrote the pool and people rated all of it, through leases as in the app: something to train on.
    project.pool_target = 12
    project.pg_config = {**project.pg_config, "minibatch_size": 1}  # 12 steps per epoch: long enough to watch
    project.save(update_fields=["pool_target", "pg_config"])
    for seed in (31, 32):  # six training prompts: one completion each per refill
        annotation_services.completion_pool_refill(project=project, seed=seed)
    raters = [make_user("r1"), make_user("r2")]
    for i in range(30):
        lease = annotation_services.lease_next(project=project, annotator=raters[i % 2])
        if lease is None:
            break
        annotation_services.rating_create(annotator=raters[i % 2], completion=lease.completion, score=5 if (i // 2) % 2 else 1)
    assert Completion.objects.filter(project=project, ratings__isnull=False).distinct().count() == 12
    v0 = project.served_version

    worker_log = celery_processes.start(
        "worker", "worker", "-Q", "generation,training", "-c", "1", "--purge", "--loglevel", "INFO", "-n", "staff@%h"
    )
    celery_processes.wait_for_log(worker_log, "ready.")

    page = login_page(staff_user)
    page.goto(f"{live_server.url}/staff/p/{project.slug}/runs/")
    screenshot(page, "staff-runs")
    page.fill("#id_epochs", "20")
    page.fill("#id_lr", "0.002")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#run-status")
    run = TrainingRun.objects.get(project=project)
    assert run.config["epochs"] == 20 and run.requested_by == staff_user

    # The page updates by itself (htmx polling): first the progress bar mid-run, then success.
    mid_run = page.locator('#run-status[data-status="running"] #run-progress progress')
    mid_run.wait_for(timeout=45_000)
    assert 0 < int(mid_run.get_attribute("value")) < int(mid_run.get_attribute("max")) == 240
    screenshot(page, "staff-run-progress")
    page.locator('#run-status[data-status="succeeded"]').wait_for(timeout=45_000)
    assert page.locator("#run-badge").inner_text() == "Succeeded"
    progress = page.locator("#run-progress progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "240"  # 20 epochs x 12 minibatches
    assert "epoch 20 of 20" in page.locator("#run-progress").inner_text()
    assert image_loaded(page.locator("img[alt^='Policy-gradient loss']"))  # server-rendered PNG, CSP img-src 'self'
    assert "passed the promotion guard" in page.locator("#run-log").inner_text()
    # The steps it went through, each done once, in order.
    steps = page.locator("#run-steps tbody tr")
    assert [row.get_attribute("data-step") for row in steps.all()] == ["batch", "update", "save", "evaluate", "promote"]
    assert page.locator('#run-steps tr[data-step-status="done"]').count() == 5
    screenshot(page, "staff-run-succeeded")
    run.refresh_from_db()
    v1 = run.result_version
    assert v1.number == 1 and run.promoted

    # Roll back: serve the previous version in one click.
    page.goto(f"{live_server.url}/staff/p/{project.slug}/versions/")
    assert "served" in page.locator("#version-1").inner_text()
    page.click('[data-promote="0"]')  # opens the confirmation: a reason, then the confirm button
    page.fill("#reason-0", "rolling back to compare")
    page.click('[data-confirm-promote="0"]')
    page.locator("#flash").get_by_text("Version 0 is now served").wait_for()
    assert "served" in page.locator("#version-0").inner_text()
    assert all(image_loaded(plot) for plot in page.locator(".plots img").all())
    screenshot(page, "staff-versions-rolled-back")
    project.refresh_from_db()
    assert project.served_version == v0

    # Side by side on the same held-out prompts (both were evaluated: read from the cache).
    page.select_option("#compare-form select[name=a]", "0")
    page.select_option("#compare-form select[name=b]", "1")
    page.click("#compare-form button[type=submit]")
    page.locator("#compare").wait_for()
    headers = page.locator("table.compare thead th").all_inner_texts()
    assert [h.split()[0] for h in headers] == ["Prompt", "v0", "v1"] and "distinct-2" in headers[2]
    assert page.locator("table.compare tbody tr").count() == project.prompts.filter(held_out=True).count()
    screenshot(page, "staff-compare")
    assert AuditEvent.objects.get(action="promote", actor=staff_user, target="v0").detail["reason"] == "rolling back to compare"

    # The pool refills from v0 (queued by the promotion), and the annotator is served v0's writing.
    celery_processes.wait_until(
        lambda: Completion.objects.filter(project=project, model_version=v0, ratings__isnull=True).exists(),
        45, "a fresh completion from v0",
    )
    annotator_page = login_page(annotator)
    annotator_page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    annotator_page.wait_for_selector("#card[data-completion]")
    assert "version" not in annotator_page.locator("#card").inner_text().lower()  # blind: the card hides it
    served = Completion.objects.get(pk=int(annotator_page.get_attribute("#card", "data-completion")))
    assert served.model_version == v0 and not served.ratings.exists()

    # Download v1 as a Hugging Face folder: the worker builds it, the row turns into a link by itself.
    page.goto(f"{live_server.url}/staff/p/{project.slug}/versions/")
    page.click("#export-1 button[type=submit]")
    page.locator("#flash").get_by_text("Building v1 as a Hugging Face folder").wait_for()
    page.locator('#export-1[data-export-status="ready"]').wait_for(timeout=60_000)
    screenshot(page, "staff-versions-download-ready")
    with page.expect_download() as download_info:
        page.click("#export-1 a")
    download = download_info.value
    assert download.suggested_filename == f"{project.slug}-v1.zip"
    names = zipfile.ZipFile(download.path()).namelist()
    assert f"{project.slug}-v1/config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert AuditEvent.objects.filter(action="export_version", actor=staff_user, target="v1").exists()
