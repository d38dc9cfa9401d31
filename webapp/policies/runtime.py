"""Loading model versions into a worker process.

Only Celery worker processes call this (never a web request), and only after
the prefork fork, so torch's thread pool is never forked. A generation worker
keeps the last version it loaded; a training run loads its own trainable copy.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import artifacts
from .models import ModelVersion

_lock = threading.Lock()
_cached: dict[tuple[int, str], object] = {}


def version_dir(version: ModelVersion) -> Path:
    """A local folder holding ``version``'s weights.

    ``weights_path`` is either a local folder (the local default, and base models
    registered from a folder) or a name in the ``models`` storage, fetched by
    :func:`webapp.policies.artifacts.folder_fetch` into this machine's cache and checked
    against its manifest's hashes.

    Raises:
        webapp.policies.artifacts.ArtifactMissing: a stored version without its manifest.
    """
    if os.path.isabs(version.weights_path):
        return Path(version.weights_path)
    return artifacts.folder_fetch(name=version.weights_path)


def base_dir(project) -> Path:
    """A local folder holding the project's base model (its version 0, fetched like any version)."""
    base = ModelVersion.objects.filter(project_id=project.pk, number=0).first() if project.pk else None
    return version_dir(base) if base is not None else Path(project.base_model_path)


def _paths(version: ModelVersion) -> tuple[Path, Path | None, str | None]:
    project = version.project
    if version.kind == ModelVersion.Kind.BASE:
        return version_dir(version), None, None
    if version.kind == ModelVersion.Kind.LORA:
        return base_dir(project), version_dir(version), version.sha256 or None
    # A full fine-tune is a complete model folder of its own.
    return version_dir(version), None, None


def policy_load(version: ModelVersion, *, trainable: bool = False, config=None):
    """Load ``version`` as a :class:`pgcore.policy.Policy` on this machine's device.

    LoRA versions load the project's base model plus the version's adapter,
    whose sha256 is checked first (``pgcore.policy.ChecksumError`` on mismatch). The
    device is :func:`pgcore.precision.select_device`: a CUDA GPU when PyTorch sees one,
    else the CPU; ``REWARDLOOP_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``) forces it.

    Raises:
        ValueError: ``REWARDLOOP_DEVICE`` names a device this machine lacks.
    """
    from pgcore.policy import load_policy, verify_weights
    from pgcore.precision import select_device

    base_path, adapter_path, sha = _paths(version)
    if version.kind == ModelVersion.Kind.FULL and version.sha256:
        verify_weights(base_path, version.sha256)
    return load_policy(
        base_path, adapter_path, config=config, trainable=trainable, expected_sha256=sha, device=select_device()
    )


def policy_for_generation(version: ModelVersion):
    """The process-wide cached, frozen policy of ``version`` (one kept at a time)."""
    key = (version.pk, version.sha256)
    with _lock:
        if key not in _cached:
            _cached.clear()
            policy = policy_load(version, trainable=False)
            policy.model.eval()
            _cached[key] = policy
        return _cached[key]
