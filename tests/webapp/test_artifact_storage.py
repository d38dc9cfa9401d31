"""Artifacts through Django's storage API: local folders by default, an S3 bucket (moto's real server) when configured.

A folder artifact is visible only with its manifest (written last); a worker fetches a
version by name into its own cache, checked against the manifest's hashes; a whole
training run and its promotion work with nothing but the bucket between steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from webapp.policies import artifacts
from webapp.policies.models import ModelVersion


def test_the_local_default_keeps_artifacts_in_the_configured_folders(models_dir, settings, tmp_path):
    settings.REWARDLOOP_EXPORTS_DIR = tmp_path / "exports"
    assert artifacts.is_local("models")
    assert artifacts.local_path("t/run-1") == Path(models_dir) / "t" / "run-1"
    assert artifacts.local_path("a.zip", "exports") == tmp_path / "exports" / "a.zip"
    artifacts.put_bytes("x/batch.json", b"{}", "models")
    assert (Path(models_dir) / "x" / "batch.json").read_bytes() == b"{}"
    artifacts.put_bytes("x/batch.json", b"[1]", "models")  # overwritten in place, as S3 does
    assert sorted(p.name for p in (Path(models_dir) / "x").iterdir()) == ["batch.json"]


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown artifact kind"):
        artifacts.storage("weights")


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"\x00" * 3000)
    (src / "sub" / "b.json").write_text('{"k": 1}')
    return src


def test_a_published_folder_is_fetched_into_the_cache_and_checked_by_hash(s3_storages, tmp_path):
    src = _folder(tmp_path)
    manifest = artifacts.folder_publish(source=src, name="p/run-1")
    assert set(manifest["files"]) == {"a.bin", "sub/b.json"}
    assert not artifacts.is_local("models") and artifacts.local_path("p/run-1") is None

    got = artifacts.folder_fetch(name="p/run-1")
    assert got.is_relative_to(tmp_path / "cache")
    assert (got / "a.bin").read_bytes() == b"\x00" * 3000 and (got / "sub" / "b.json").read_text() == '{"k": 1}'
    assert artifacts.folder_fetch(name="p/run-1") == got  # the second time: from the cache


def test_a_cached_file_corrupted_in_place_is_noticed_by_its_hash_and_fetched_again(s3_storages, tmp_path):
    artifacts.folder_publish(source=_folder(tmp_path), name="p/run-5")
    got = artifacts.folder_fetch(name="p/run-5")
    with open(got / "a.bin", "r+b") as f:  # same size: a check by size alone would miss it
        f.write(b"\x01")
    again = artifacts.folder_fetch(name="p/run-5")
    assert again == got and (again / "a.bin").read_bytes() == b"\x00" * 3000
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # the bad copy is gone, no temporary left


def test_a_cached_file_touched_but_intact_is_rehashed_and_kept(s3_storages, tmp_path):
    import os

    artifacts.folder_publish(source=_folder(tmp_path), name="p/run-6")
    got = artifacts.folder_fetch(name="p/run-6")
    inode = (got / "a.bin").stat().st_ino
    stamp = (got / artifacts.STAMP).read_text()
    os.utime(got / "a.bin", ns=(0, 10**9))  # new mtime, same bytes
    assert artifacts.folder_fetch(name="p/run-6") == got
    assert (got / "a.bin").stat().st_ino == inode  # not downloaded again
    assert (got / artifacts.STAMP).read_text() != stamp  # the stamp now records the new mtime


def test_a_cached_entry_without_a_stamp_is_checked_by_hash(s3_storages, tmp_path):
    artifacts.folder_publish(source=_folder(tmp_path), name="p/run-7")
    got = artifacts.folder_fetch(name="p/run-7")
    (got / artifacts.STAMP).unlink()  # an entry cached before stamps existed
    (got / "sub" / "b.json").write_text('{"k": 2}')  # same size, other content
    assert artifacts.folder_fetch(name="p/run-7") == got
    assert (got / "sub" / "b.json").read_text() == '{"k": 1}' and (got / artifacts.STAMP).is_file()


def test_two_processes_fetching_one_version_at_once_share_one_complete_folder(s3_storages, tmp_path):
    import threading

    artifacts.folder_publish(source=_folder(tmp_path), name="p/run-9")
    got, errors = [], []

    def fetch():
        try:
            got.append(artifacts.folder_fetch(name="p/run-9"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(got)) == 1
    assert (got[0] / "a.bin").stat().st_size == 3000
    assert [p.name for p in got[0].parent.iterdir()] == [got[0].name]  # no temporary folder left


def test_a_folder_without_its_manifest_is_invisible(s3_storages, tmp_path):
    src = _folder(tmp_path)
    st = artifacts.storage("models")
    with open(src / "a.bin", "rb") as f:  # a writer that died before the manifest
        st.save("p/run-2/a.bin", f)
    with pytest.raises(artifacts.ArtifactMissing, match="incomplete"):
        artifacts.folder_fetch(name="p/run-2")


def test_a_stored_file_that_does_not_match_its_manifest_is_refused_and_nothing_is_cached(s3_storages, tmp_path):
    artifacts.folder_publish(source=_folder(tmp_path), name="p/run-3")
    artifacts.put_bytes("p/run-3/a.bin", b"tampered", "models")
    with pytest.raises(artifacts.ArtifactMissing, match="sha256"):
        artifacts.folder_fetch(name="p/run-3")
    assert not list((tmp_path / "cache" / "models").glob("p__run-3*"))


def test_plots_are_drawn_into_and_served_from_the_bucket(s3_storages, monkeypatch):
    from webapp.policies import plotfiles

    monkeypatch.setattr(plotfiles.broker, "task_send", lambda *a, **k: True)
    kind = "line_with_band"
    spec = {"x": [1, 2], "y": [0.1, 0.2], "low": [0.0, 0.1], "high": [0.2, 0.3], "title": "KL", "xlabel": "v",
            "ylabel": "kl"}
    assert plotfiles.plot_response(kind, spec, slot="s")["X-Plot"] == "drawing"
    key = plotfiles.plot_draw(kind=kind, data=spec, slot="s")
    assert artifacts.storage("plots").exists(f"{key}.png")
    response = plotfiles.plot_response(kind, spec, slot="s", asked_key=key)
    assert response["X-Plot"] == "ready" and response.content.startswith(b"\x89PNG")
    assert plotfiles.plots_prune(older_than_s=-1) >= 2
    assert plotfiles.plot_response(kind, spec, slot="s")["X-Plot"] == "drawing"


def test_a_whole_run_goes_through_the_bucket_and_any_cache_can_load_the_new_version(
    s3_storages, project, make_user, tmp_path, settings
):
    from webapp.policies.runtime import policy_load, version_dir
    from webapp.training import services as training_services
    from webapp.training.models import STEP_ORDER

    base = ModelVersion.objects.get(project=project, number=0)
    assert base.weights_path == f"{project.slug}/base"  # project_create uploaded the base model
    assert "model.safetensors" in artifacts.manifest_read(base.weights_path)["files"]

    from webapp.annotation import services as annotation_services
    from webapp.annotation.models import Completion, Rating

    user = make_user("a")
    annotation_services.completion_pool_refill(project=project, seed=1)
    for completion in Completion.objects.filter(project=project, ratings__isnull=True):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 2)
    run = training_services.training_run_create(project=project, trigger="manual")
    for i, name in enumerate(STEP_ORDER):
        if i == 2:  # the save step on another machine: a fresh cache and no working folder
            settings.REWARDLOOP_CACHE_DIR = tmp_path / "cache-b"
        training_services.training_step_run(run_id=run.pk, step=name, worker="w@box:1", chain=False)
    run.refresh_from_db()
    assert run.status == "succeeded" and run.promoted, run.log
    version = run.result_version
    assert version.weights_path == f"{project.slug}/run-{run.pk}"  # a name in the bucket, not a folder
    manifest = artifacts.manifest_read(version.weights_path)
    assert manifest["weights_sha256"] == version.sha256
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").rglob("*.safetensors"))

    settings.REWARDLOOP_CACHE_DIR = tmp_path / "cache-c"  # a third machine loads it
    policy = policy_load(version)
    assert policy.is_lora
    assert version_dir(version).is_relative_to(tmp_path / "cache-c")
