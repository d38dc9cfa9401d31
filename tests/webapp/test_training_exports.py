"""Exports that the rest of the ecosystem reads: HF model folders and TRL-ready JSONL."""

import json
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Choice, Comparison, Completion, Pair, Rating
from webapp.policies.models import AuditEvent
from webapp.training import services as training_services


@pytest.fixture
def trained_version(project, make_user):
    """v1: a LoRA version trained on the tiny model."""
    annotation_services.completion_pool_refill(project=project, seed=11)
    user = make_user("rater")
    for completion in Completion.objects.filter(project=project):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 1)
    project.pg_config = {**project.pg_config, "lr": 5e-2}  # a visible change of the weights
    project.save(update_fields=["pg_config"])
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded", run.error
    return run.result_version


def test_an_exported_lora_version_loads_with_from_pretrained_and_matches_the_adapter(trained_version, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from webapp.policies.runtime import policy_load

    out = tmp_path / "export"
    call_command("export_version", trained_version.project.slug, str(trained_version.number), str(out))

    assert not (out / "adapter_config.json").exists()  # merged: plain transformers, no peft
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Continue this review: film", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    # Same function as the served adapter, not merely the base model.
    adapter = policy_load(trained_version).model
    base = AutoModelForCausalLM.from_pretrained(trained_version.project.base_model_path)
    with torch.no_grad():
        merged_logits = model(**ids).logits
        torch.testing.assert_close(merged_logits, adapter(**ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged_logits, base(**ids).logits, atol=1e-4)
    assert AuditEvent.objects.filter(action="export_version", target="v1").exists()


def test_export_version_refuses_an_existing_folder_and_an_unknown_version(trained_version, tmp_path):
    slug = trained_version.project.slug
    (tmp_path / "taken").mkdir()
    with pytest.raises(CommandError, match="exists already"):
        call_command("export_version", slug, "1", str(tmp_path / "taken"))
    with pytest.raises(CommandError, match="no version 9"):
        call_command("export_version", slug, "9", str(tmp_path / "new"))


@pytest.fixture
def judged(project, make_user, make_completion):
    """Likert ratings of three completions of one prompt, a thumbs-free neutral 3, and one pairwise choice."""
    prompt = project.prompts.filter(held_out=False).order_by("id").first()
    good = make_completion(project, text="a warm, vivid review", prompt=prompt)
    bad = make_completion(project, text="asdf asdf", prompt=prompt)
    neutral = make_completion(project, text="it was a film", prompt=prompt)
    ann1, ann2 = make_user("r1"), make_user("r2")
    Rating.objects.create(completion=good, annotator=ann1, score=5)
    Rating.objects.create(completion=good, annotator=ann2, score=4)
    Rating.objects.create(completion=bad, annotator=ann1, score=1)
    Rating.objects.create(completion=neutral, annotator=ann1, score=3)
    other = project.prompts.filter(held_out=False).order_by("id")[1]
    a = make_completion(project, text="pair side A", prompt=other)
    b = make_completion(project, text="pair side B", prompt=other)
    pair = Pair.objects.create(project=project, completion_a=a, completion_b=b)
    Comparison.objects.create(pair=pair, annotator=ann1, choice=Choice.B, a_on_left=True)
    Comparison.objects.create(pair=pair, annotator=ann2, choice=Choice.TIE, a_on_left=False)
    return {"prompt": prompt.text, "other": other.text}


def test_kto_export_loads_with_datasets_and_labels_each_judgment(project, judged, tmp_path):
    import datasets

    out = tmp_path / "kto.jsonl"
    call_command("export_ratings", project.slug, "--format", "kto", str(out))
    data = datasets.load_dataset("json", data_files=str(out), split="train")

    assert data.column_names == ["prompt", "completion", "label"]
    rows = {(r["completion"], r["label"]) for r in data}
    assert rows == {
        ("a warm, vivid review", True),  # 5
        ("a warm, vivid review", True),  # 4 (a set: one entry)
        ("asdf asdf", False),  # 1
        ("pair side B", True),  # the pairwise winner
        ("pair side A", False),  # its loser
    }
    assert len(data) == 5  # the neutral 3 and the tie give no row
    for r in data:
        assert r["prompt"] == (judged["other"] if r["completion"].startswith("pair") else judged["prompt"])
    assert AuditEvent.objects.filter(action="export_ratings", detail__rows=5).exists()


def test_pairs_export_loads_with_datasets_and_puts_the_better_completion_first(project, judged, tmp_path):
    import datasets

    out = tmp_path / "pairs.jsonl"
    call_command("export_ratings", project.slug, str(out), "--format=pairs")
    data = datasets.load_dataset("json", data_files=str(out), split="train")

    assert data.column_names == ["prompt", "chosen", "rejected"]
    pairs = {(r["prompt"], r["chosen"], r["rejected"]) for r in data}
    assert pairs == {
        (judged["other"], "pair side B", "pair side A"),  # explicit choice
        (judged["prompt"], "a warm, vivid review", "asdf asdf"),  # 4.5 vs 1
        (judged["prompt"], "a warm, vivid review", "it was a film"),  # 4.5 vs 3
        (judged["prompt"], "it was a film", "asdf asdf"),  # 3 vs 1
    }
    assert len(data) == 4
    for line in out.read_text().splitlines():
        assert set(json.loads(line)) == {"prompt", "chosen", "rejected"}


def test_export_ratings_refuses_an_unknown_project(db, tmp_path):
    with pytest.raises(CommandError, match="No project"):
        call_command("export_ratings", "nope", str(tmp_path / "x.jsonl"), "--format", "kto")


@pytest.mark.parametrize("fmt", ["kto", "pairs"])
def test_export_ratings_refuses_to_write_an_empty_file(project, fmt, tmp_path):
    out = tmp_path / "empty.jsonl"
    with pytest.raises(CommandError, match="Nothing to export yet"):
        call_command("export_ratings", project.slug, str(out), "--format", fmt)

    assert not out.exists()
    assert not AuditEvent.objects.filter(action="export_ratings").exists()


# --- Downloads from the versions page: built by the training worker, never in the request ---


@pytest.fixture
def exports_dir(tmp_path, settings):
    settings.REWARDLOOP_EXPORTS_DIR = tmp_path / "exports"
    return settings.REWARDLOOP_EXPORTS_DIR


@pytest.fixture
def sent_tasks(monkeypatch):
    """The Celery messages the web process sends, instead of a broker."""
    from webapp.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, queue=None, **kw: sent.append((name, args, queue)))
    return sent


def test_prepare_download_queues_one_build_on_the_training_queue_and_the_row_polls(
    staff_client, project, exports_dir, sent_tasks, django_capture_on_commit_callbacks
):
    from webapp.policies.models import VersionExport

    url = f"/staff/p/{project.slug}/versions/0/export/"
    with django_capture_on_commit_callbacks(execute=True):
        first = staff_client.post(url)
        second = staff_client.post(url)  # a double click: still one build
    assert first.status_code == second.status_code == 302
    assert first.url.endswith("/versions/#version-0")
    export = VersionExport.objects.get()
    assert export.status == "queued"
    assert sent_tasks == [("webapp.policies.tasks.version_export_build", [export.pk], "training")]
    page = staff_client.get(f"/staff/p/{project.slug}/versions/").content.decode()
    assert 'data-export-status="queued"' in page and 'hx-trigger="every 2s"' in page and "<progress" in page
    assert "Building v0 as a Hugging Face folder on the training worker" in page  # the flash message
    assert not exports_dir.exists() or not any(exports_dir.iterdir())  # nothing was built in the request


def test_a_built_export_is_a_zipped_merged_folder_linked_from_its_row_and_served_again(
    staff_client, staff_user, trained_version, exports_dir, sent_tasks, django_capture_on_commit_callbacks
):
    import io
    import zipfile

    from webapp.policies import services as policy_services
    from webapp.policies import tasks as policy_tasks

    slug = trained_version.project.slug
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/p/{slug}/versions/1/export/")
    (_, (export_id,), _) = sent_tasks[0]
    assert policy_tasks.version_export_build(export_id) == "ready"  # the task body, as the worker runs it

    export = policy_services.VersionExport.objects.get(pk=export_id)
    assert export.size_bytes > 0 and export.requested_by == staff_user and export.finished_at
    assert [p.name for p in exports_dir.iterdir()] == [f"{slug}-v1-export{export.pk}.zip"]  # no temporary folder left
    event = AuditEvent.objects.get(action="export_version")
    assert event.actor == staff_user and event.target == "v1" and event.detail["merged_lora"] is True

    cell = staff_client.get(f"/staff/p/{slug}/versions/1/export/status/", HTTP_HX_REQUEST="true").content.decode()
    download = f"/staff/p/{slug}/versions/1/export/{export.pk}/download/"
    assert 'data-export-status="ready"' in cell and download in cell and "every 2s" not in cell
    response = staff_client.get(download)
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert f'filename="{slug}-v1.zip"' in response["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert f"{slug}-v1/config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert not any("adapter" in n for n in names)  # LoRA merged

    with django_capture_on_commit_callbacks(execute=True):
        again = staff_client.post(f"/staff/p/{slug}/versions/1/export/")
    assert again.status_code == 302 and again.url == download  # versions never change: no second build
    assert len(sent_tasks) == 1 and policy_services.VersionExport.objects.count() == 1
    assert policy_tasks.version_export_build(export_id) == "ready"  # a second delivery changes nothing
    assert AuditEvent.objects.filter(action="export_version").count() == 1


def test_a_failed_export_shows_why_leaves_no_files_and_can_be_retried(
    staff_client, project, exports_dir, sent_tasks, django_capture_on_commit_callbacks
):
    from webapp.policies import services as policy_services

    version = project.served_version
    version.weights_path = str(exports_dir.parent / "no-such-model")
    version.save(update_fields=["weights_path"])
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/p/{project.slug}/versions/0/export/")
    export = policy_services.version_export_build(export_id=sent_tasks[0][1][0])
    assert export.status == "failed" and "no-such-model" in export.error
    assert list(exports_dir.iterdir()) == []
    assert not AuditEvent.objects.filter(action="export_version").exists()
    cell = staff_client.get(f"/staff/p/{project.slug}/versions/0/export/status/", HTTP_HX_REQUEST="true").content.decode()
    assert "Export failed:" in cell and "no-such-model" in cell and "Try again" in cell and "every 2s" not in cell
    assert staff_client.get(f"/staff/p/{project.slug}/versions/0/export/{export.pk}/download/").status_code == 404

    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/p/{project.slug}/versions/0/export/")
    assert len(sent_tasks) == 2 and sent_tasks[1][1] != sent_tasks[0][1]  # a new export, not the failed one


def test_an_export_whose_worker_was_killed_is_rebuilt_whole_on_redelivery(project, exports_dir):
    from webapp.policies import services as policy_services
    from webapp.policies.models import VersionExport

    export = VersionExport.objects.create(version=project.served_version, status=VersionExport.Status.BUILDING)
    leftover = exports_dir / f".{project.slug}-v0-export{export.pk}-killed"  # what a SIGKILL mid-zip leaves
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    assert policy_services.version_export_build(export_id=export.pk).status == "ready"
    assert [p.name for p in exports_dir.iterdir()] == [f"{project.slug}-v0-export{export.pk}.zip"]


def test_a_broker_that_cannot_be_reached_fails_the_export_with_the_reason(
    staff_client, project, exports_dir, monkeypatch, django_capture_on_commit_callbacks
):
    from webapp.celery import app
    from webapp.policies.models import VersionExport

    def down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(app, "send_task", down)
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(f"/staff/p/{project.slug}/versions/0/export/").status_code == 302
    export = VersionExport.objects.get()
    assert export.status == "failed" and "Could not reach the task queue" in export.error


def test_a_ready_export_whose_file_is_gone_says_so_and_is_rebuilt_on_request(
    staff_client, project, exports_dir, sent_tasks, django_capture_on_commit_callbacks
):
    from webapp.policies import services as policy_services

    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/p/{project.slug}/versions/0/export/")
    export = policy_services.version_export_build(export_id=sent_tasks[0][1][0])
    Path(export.archive_path).unlink()
    page = staff_client.get(f"/staff/p/{project.slug}/versions/0/export/{export.pk}/download/", follow=True)
    assert "no longer on disk" in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/staff/p/{project.slug}/versions/0/export/")
    # Two builds: the first export and the one asked for again (the versions page may also have
    # queued a plot drawing, depending on what earlier tests in the process drew).
    builds = [args for name, args, _ in sent_tasks if name == "webapp.policies.tasks.version_export_build"]
    assert len(builds) == 2 and builds[1] != builds[0]
