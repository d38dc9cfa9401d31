"""A project's base model is recorded by its name under the models folder, so every machine finds its own copy.

"Another machine" here is this process with ``REWARDLOOP_MODELS_DIR`` pointed at another
folder holding its own copy of the base model, and the first machine's copy deleted.
"""

from __future__ import annotations

import importlib
import shutil

from django.apps import apps

from tests.webapp.test_run_pipeline import rate_pool
from webapp.policies.models import ModelVersion, Project
from webapp.policies.runtime import base_dir, policy_load
from webapp.rewards.services import reward_model_config_for
from webapp.training import services as training_services

migration = importlib.import_module("webapp.policies.migrations.0012_base_model_portable_names")


def test_a_base_under_the_models_folder_is_recorded_by_name_and_another_machine_trains_from_its_own_copy(
    project_factory, tiny_model_dir, models_dir, settings, tmp_path, make_user
):
    shutil.copytree(tiny_model_dir, models_dir / "bases" / "tiny")
    project = project_factory("named", models_dir / "bases" / "tiny")
    assert project.base_model_path == "bases/tiny"
    assert project.served_version.weights_path == "bases/tiny"
    rate_pool(project, make_user("a"))

    other = tmp_path / "other-machine-models"
    shutil.copytree(tiny_model_dir, other / "bases" / "tiny")
    shutil.rmtree(models_dir / "bases")
    settings.REWARDLOOP_MODELS_DIR = other

    assert base_dir(project) == other / "bases" / "tiny"
    assert reward_model_config_for(project=project).layers  # reads the depth from this machine's copy
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded", run.error
    policy_load(run.result_version)  # the LoRA version loads on the base found here


def test_a_base_outside_the_models_folder_keeps_its_absolute_path(project):
    assert project.base_model_path.startswith("/")
    assert base_dir(project).is_dir()


def test_the_migration_turns_paths_under_the_models_folder_into_names_and_back(project_factory, tiny_model_dir, models_dir):
    shutil.copytree(tiny_model_dir, models_dir / "tiny")
    inside = project_factory("inside", models_dir / "tiny")
    outside = project_factory("outside", tiny_model_dir)
    absolute = str(models_dir / "tiny")
    Project.objects.filter(pk=inside.pk).update(base_model_path=absolute)  # as recorded before the migration
    ModelVersion.objects.filter(project=inside, number=0).update(weights_path=absolute)

    migration.names_under_models_dir(apps, None)
    assert Project.objects.get(pk=inside.pk).base_model_path == "tiny"
    assert ModelVersion.objects.get(project=inside, number=0).weights_path == "tiny"
    assert Project.objects.get(pk=outside.pk).base_model_path == str(tiny_model_dir.resolve())
    assert base_dir(Project.objects.get(pk=inside.pk)) == models_dir / "tiny"

    migration.absolute_paths(apps, None)
    assert Project.objects.get(pk=inside.pk).base_model_path == str((models_dir / "tiny").resolve())
    assert ModelVersion.objects.get(project=inside, number=0).weights_path == str((models_dir / "tiny").resolve())
