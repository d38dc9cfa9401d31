"""Trained versions are recorded by their name in the models storage, so each machine resolves its own copy.

With the local storage, versions registered before recorded the writing machine's absolute
folder (``<REWARDLOOP_MODELS_DIR>/<slug>/run-N``). A trained version (not version 0: see
0012) whose folder lies in this machine's local ``models`` storage *and has its manifest*
becomes that name (``<slug>/run-N``), which :func:`webapp.policies.artifacts.models_folder`
resolves under each machine's models folder. Any other path (a folder written before
manifests, one outside the models folder, one missing here) keeps its absolute path, which
still loads where it exists. With a remote storage nothing changes (its versions are names
already). Reversing writes the absolute path under this machine's models folder back for
names whose folder (with its manifest) is there; a bucket's names stay.
"""

import os
from pathlib import Path

from django.core.files.storage import FileSystemStorage, storages
from django.db import migrations, models

MANIFEST = "manifest.json"


def _root() -> Path | None:
    st = storages["models"]
    return Path(st.location) if isinstance(st, FileSystemStorage) else None


def _to_name(ref: str, root: Path) -> str:
    if not os.path.isabs(ref):
        return ref
    for base, path in ((root, Path(ref)), (root.resolve(), Path(ref).resolve())):
        try:
            name = path.relative_to(base).as_posix()
        except ValueError:
            continue
        if name not in ("", ".") and ".." not in name.split("/") and (root / name / MANIFEST).is_file():
            return name
    return ref


def _to_path(ref: str, root: Path) -> str:
    if os.path.isabs(ref) or not ref or not (root / ref / MANIFEST).is_file():
        return ref
    return str(root / ref)


def _rewrite(apps, convert) -> None:
    root = _root()
    if root is None:
        return
    ModelVersion = apps.get_model("policies", "ModelVersion")
    for version in ModelVersion.objects.exclude(kind="base").only("pk", "weights_path"):
        new = convert(version.weights_path, root)
        if new != version.weights_path:
            ModelVersion.objects.filter(pk=version.pk).update(weights_path=new)


def names_in_models_storage(apps, schema_editor):
    _rewrite(apps, _to_name)


def absolute_paths(apps, schema_editor):
    _rewrite(apps, _to_path)


class Migration(migrations.Migration):

    dependencies = [
        ("policies", "0013_merge_20261207_0410"),
    ]

    operations = [
        migrations.AlterField(
            model_name="modelversion",
            name="weights_path",
            field=models.CharField(
                help_text=(
                    "Version 0: the base model folder (its name under REWARDLOOP_MODELS_DIR, or an absolute path). "
                    "Otherwise this version's own folder: its name in the models storage (<project>/run-N), which each "
                    "machine resolves in its own models folder or cache, or an absolute path recorded before names "
                    "were portable."
                ),
                max_length=500,
                verbose_name="weights folder",
            ),
        ),
        migrations.RunPython(names_in_models_storage, absolute_paths),
    ]
