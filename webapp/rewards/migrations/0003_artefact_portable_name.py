"""Reward-model versions are recorded by their name in the models storage, so each machine resolves its own copy.

As ``policies`` 0014 does for trained versions: an ``artefact_path`` whose folder lies in this
machine's local ``models`` storage *and has its manifest* becomes its name
(``<slug>/reward-models/rm-…``); any other (a folder fitted before the local storage wrote
manifests, one missing here) keeps its absolute path, which still loads where it exists. With
a remote storage nothing changes. Reversing writes the absolute path back for names whose
folder (with its manifest) is under this machine's models folder.
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
    RewardModelVersion = apps.get_model("rewards", "RewardModelVersion")
    for version in RewardModelVersion.objects.only("pk", "artefact_path"):
        new = convert(version.artefact_path, root)
        if new != version.artefact_path:
            RewardModelVersion.objects.filter(pk=version.pk).update(artefact_path=new)


def names_in_models_storage(apps, schema_editor):
    _rewrite(apps, _to_name)


def absolute_paths(apps, schema_editor):
    _rewrite(apps, _to_path)


class Migration(migrations.Migration):

    dependencies = [
        ("rewards", "0002_backbone_portable_name"),
    ]

    operations = [
        migrations.AlterField(
            model_name="rewardmodelversion",
            name="artefact_path",
            field=models.CharField(
                help_text="Its name in the models storage (<project>/reward-models/rm-…), which each machine resolves "
                "in its own models folder or cache, or an absolute path recorded before names were portable.",
                max_length=500,
                verbose_name="artefact folder",
            ),
        ),
        migrations.RunPython(names_in_models_storage, absolute_paths),
    ]
