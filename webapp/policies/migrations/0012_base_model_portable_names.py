"""Base models are recorded by their name under REWARDLOOP_MODELS_DIR, so each machine resolves its own copy.

Rows written before recorded the creating machine's absolute path. A path under this
machine's ``REWARDLOOP_MODELS_DIR`` becomes its name there (``Project.base_model_path``, the
base version's ``weights_path`` and a reward model's ``backbone_path``); any other path,
and the ``<slug>/base`` names of a remote storage, stay as they are. Reversing writes the
absolute path under this machine's models folder back.
"""

import os
from pathlib import Path

from django.conf import settings
from django.db import migrations, models


def _models_dir() -> Path:
    return Path(settings.REWARDLOOP_MODELS_DIR).expanduser().resolve()


def _to_name(ref: str) -> str:
    if not os.path.isabs(ref):
        return ref
    try:
        return Path(ref).resolve().relative_to(_models_dir()).as_posix()
    except ValueError:
        return ref


def _to_path(ref: str) -> str:
    return ref if os.path.isabs(ref) or not ref else str(_models_dir() / ref)


def _rewrite(apps, convert, base_weights_only_if_local: bool) -> None:
    Project = apps.get_model("policies", "Project")
    ModelVersion = apps.get_model("policies", "ModelVersion")
    RewardModelVersion = apps.get_model("rewards", "RewardModelVersion")
    for project in Project.objects.only("pk", "base_model_path"):
        new = convert(project.base_model_path)
        if new != project.base_model_path:
            Project.objects.filter(pk=project.pk).update(base_model_path=new)
    for version in ModelVersion.objects.filter(kind="base").only("pk", "weights_path"):
        # Reversed, only names that lie in this machine's models folder were ours ("<slug>/base" is the bucket's).
        if base_weights_only_if_local and not (_models_dir() / version.weights_path / "config.json").is_file():
            continue
        new = convert(version.weights_path)
        if new != version.weights_path:
            ModelVersion.objects.filter(pk=version.pk).update(weights_path=new)
    for rm in RewardModelVersion.objects.only("pk", "backbone_path"):
        new = convert(rm.backbone_path)
        if new != rm.backbone_path:
            RewardModelVersion.objects.filter(pk=rm.pk).update(backbone_path=new)


def names_under_models_dir(apps, schema_editor):
    _rewrite(apps, _to_name, base_weights_only_if_local=False)


def absolute_paths(apps, schema_editor):
    _rewrite(apps, _to_path, base_weights_only_if_local=True)


class Migration(migrations.Migration):

    dependencies = [
        ("policies", "0011_merge_0009_rubric_0010_merge_20261207_0105"),
        ("rewards", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="project",
            name="base_model_path",
            field=models.CharField(
                help_text=(
                    "Hugging Face causal-LM folder the lineage starts from: its name under REWARDLOOP_MODELS_DIR, "
                    "which each machine resolves under its own models folder, or an absolute path outside it."
                ),
                max_length=500,
                verbose_name="base model folder",
            ),
        ),
        migrations.RunPython(names_under_models_dir, absolute_paths),
    ]
