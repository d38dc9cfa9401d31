"""Trained versions and reward-model versions are recorded by their name in the models storage.

With the local storage a version's ``weights_path`` (and a reward model's ``artefact_path``)
is ``<slug>/run-N`` (``<slug>/reward-models/rm-…``), which each machine resolves under its
own ``REWARDLOOP_MODELS_DIR`` (:func:`webapp.policies.artifacts.models_folder`). "Another
machine" here is this process with ``REWARDLOOP_MODELS_DIR`` and ``REWARDLOOP_CACHE_DIR``
pointed at other folders, holding a copy of the first machine's models folder (as a sync
or a mount elsewhere would), and the first machine's folder deleted, so no absolute path
recorded there could be followed. Migrations ``policies`` 0014 and ``rewards`` 0003 convert
older rows whose folder has its manifest, forward and back.
"""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from django.apps import apps
from torch.testing import assert_close

from tests.webapp.rewards_helpers import _rate_learnable, many_prompts  # noqa: F401
from tests.webapp.test_run_liveness import running_run
from tests.webapp.test_run_pipeline import rate_pool
from webapp.annotation.models import Completion
from webapp.policies import artifacts
from webapp.policies import services as policy_services
from webapp.policies.models import ModelVersion
from webapp.policies.runtime import policy_load, version_dir
from webapp.rewards import services as rm_services
from webapp.rewards.models import RewardModelVersion
from webapp.training import liveness
from webapp.training import services as training_services

versions_migration = importlib.import_module("webapp.policies.migrations.0014_version_portable_names")
rm_migration = importlib.import_module("webapp.rewards.migrations.0003_artefact_portable_name")

IDS = torch.tensor([[5, 6, 7, 8, 9]])


@pytest.fixture
def project(project_factory, tiny_model_dir, models_dir):
    """The project's base model lies in the models folder too, so it is recorded by name."""
    shutil.copytree(tiny_model_dir, models_dir / "bases" / "tiny")
    return project_factory("t", models_dir / "bases" / "tiny")


def _logits(version) -> torch.Tensor:
    with torch.no_grad():
        return policy_load(version).model(input_ids=IDS).logits


def _another_machine(settings, models_dir, tmp_path):
    """Copy this machine's models folder to another machine's, delete ours, and become that machine."""
    other = tmp_path / "machine-b"
    shutil.copytree(models_dir, other / "models")
    shutil.rmtree(models_dir)
    settings.REWARDLOOP_MODELS_DIR = other / "models"
    settings.REWARDLOOP_CACHE_DIR = other / "cache"
    return other


def test_a_trained_version_is_recorded_by_name_and_another_machine_loads_it_by_that_name(
    project, make_user, models_dir, settings, tmp_path
):
    rate_pool(project, make_user("a"))
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded", run.error
    version = run.result_version
    assert version.weights_path == f"t/run-{run.pk}"  # a name, not this machine's folder
    assert artifacts.manifest_read(version.weights_path)["weights_sha256"] == version.sha256
    assert version_dir(version) == models_dir / "t" / f"run-{run.pk}"
    assert liveness.run_version(run) == version
    here = _logits(version)

    other = _another_machine(settings, models_dir, tmp_path)

    assert version_dir(version) == other / "models" / "t" / f"run-{run.pk}"
    assert_close(_logits(version), here)  # the LoRA version on the base, both found by name on this machine
    assert liveness.run_leftovers_remove(run) == [] and version_dir(version).is_dir()  # registered: kept


def test_a_version_without_its_manifest_is_not_loaded_by_name(project, make_user, models_dir):
    rate_pool(project, make_user("a"))
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    (models_dir / run.result_version.weights_path / artifacts.MANIFEST).unlink()  # incomplete, as a half-copied folder
    with pytest.raises(artifacts.ArtifactMissing, match="no manifest.json"):
        policy_load(run.result_version)


def test_a_version_registered_by_name_before_its_worker_was_lost_is_held_back_and_kept(
    project, annotator, make_completion
):
    run = running_run(project, annotator, make_completion, stage="evaluating")
    out_dir = liveness.run_weights_dir(run)
    out_dir.mkdir(parents=True)
    version = policy_services.version_register(
        project=project, parent=project.served_version, kind="lora", weights_path=liveness.run_weights_ref(run),
        sha256="x", ratings_used=1, metrics={},
    )
    run = liveness.training_run_fail_lost(run_id=run.pk, reason="its worker process died")
    assert run.result_version == version and "held back" in run.error
    assert out_dir.is_dir()


def test_a_reward_model_is_recorded_by_name_and_another_machine_loads_and_scores_with_it(
    project, annotator, many_prompts, models_dir, settings, tmp_path
):
    _rate_learnable(project, many_prompts, annotator)
    version = rm_services.reward_model_fit(project=project)
    assert version.artefact_path.startswith("t/reward-models/rm-")
    assert artifacts.manifest_read(version.artefact_path)["files"]
    scores = dict(Completion.objects.values_list("id", "rm_score"))

    _another_machine(settings, models_dir, tmp_path)
    Completion.objects.update(rm_score=None)

    assert rm_services.completions_score(project=project, completion_ids=list(scores), version=version) == len(scores)
    again = dict(Completion.objects.values_list("id", "rm_score"))
    assert again.keys() == scores.keys()
    assert all(abs(again[k] - scores[k]) < 1e-4 for k in scores)


def _lora_folder(project, folder) -> str:
    """A real LoRA adapter of the project's base written to ``folder``; returns its weights' sha256."""
    from pgcore.config import PGConfig
    from pgcore.policy import CHECKSUM_FILE, load_policy, save_policy_atomic

    base = artifacts.models_folder(project.base_model_path)
    policy = load_policy(base, config=PGConfig(use_lora=True, lora_r=4, lora_alpha=8), trainable=True)
    with torch.no_grad():
        for p in policy.trainable_parameters:
            p.add_(0.05)  # so that the adapter changes the logits
    save_policy_atomic(policy, folder)
    return json.loads((folder / CHECKSUM_FILE).read_text())["sha256"]


def test_the_migration_names_trained_versions_with_a_manifest_and_keeps_older_ones_absolute_and_back(
    project, models_dir
):
    def register(folder, sha, ref=None):
        return policy_services.version_register(
            project=project, parent=project.served_version, kind="lora", weights_path=ref or folder, sha256=sha,
            ratings_used=1, metrics={},
        )

    published = models_dir / "t" / "run-101"
    sha = _lora_folder(project, published)
    artifacts.manifest_write("t/run-101")
    legacy = models_dir / "t" / "run-102"  # written before the local storage wrote manifests
    shutil.copytree(published, legacy)
    (legacy / artifacts.MANIFEST).unlink()
    a, b = register(published, sha), register(legacy, sha)  # absolute, as recorded before this migration
    bucket = register(None, sha, ref="t/run-999")  # a name with no folder here (a bucket's): left alone both ways
    before = {v.pk: _logits(v) for v in (a, b)}
    base_ref = project.served_version.weights_path

    versions_migration.names_in_models_storage(apps, None)
    a.refresh_from_db(), b.refresh_from_db(), bucket.refresh_from_db()
    assert a.weights_path == "t/run-101"
    assert b.weights_path == str(legacy) and bucket.weights_path == "t/run-999"
    assert ModelVersion.objects.get(project=project, number=0).weights_path == base_ref == "bases/tiny"
    assert version_dir(a) == published
    for v in (a, b):  # both still load: by name, and by their absolute path
        assert_close(_logits(v), before[v.pk])
    assert not torch.equal(before[a.pk], _logits(project.served_version))

    versions_migration.absolute_paths(apps, None)
    a.refresh_from_db(), b.refresh_from_db(), bucket.refresh_from_db()
    assert (a.weights_path, b.weights_path, bucket.weights_path) == (str(published), str(legacy), "t/run-999")
    assert ModelVersion.objects.get(project=project, number=0).weights_path == "bases/tiny"


def test_the_migration_names_reward_models_with_a_manifest_and_keeps_older_ones_absolute_and_back(
    project, annotator, many_prompts, models_dir
):
    _rate_learnable(project, many_prompts, annotator)
    new = rm_services.reward_model_fit(project=project)
    name = new.artefact_path
    folder = models_dir / name
    legacy_folder = folder.parent / "rm-legacy"  # fitted before the local storage wrote manifests
    shutil.copytree(folder, legacy_folder)
    (legacy_folder / artifacts.MANIFEST).unlink()
    RewardModelVersion.objects.filter(pk=new.pk).update(artefact_path=str(folder))  # as recorded before
    legacy = RewardModelVersion.objects.create(
        project=project, number=2, n_ratings=new.n_ratings, n_judgments=new.n_judgments, rating_ids=new.rating_ids,
        rating_ids_sha256=new.rating_ids_sha256, config=new.config, metrics={}, backbone_path=new.backbone_path,
        artefact_path=str(legacy_folder), sha256=new.sha256,
    )

    rm_migration.names_in_models_storage(apps, None)
    new.refresh_from_db(), legacy.refresh_from_db()
    assert new.artefact_path == name and legacy.artefact_path == str(legacy_folder)
    features = torch.randn(3, int(rm_services.reward_model_load(version=new).feature_mean.numel()))
    assert_close(rm_services.reward_model_load(version=new).score(features)[0],
                 rm_services.reward_model_load(version=legacy).score(features)[0])

    rm_migration.absolute_paths(apps, None)
    new.refresh_from_db(), legacy.refresh_from_db()
    assert (new.artefact_path, legacy.artefact_path) == (str(folder), str(legacy_folder))
