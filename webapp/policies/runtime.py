"""Loading model versions into a worker process.

Only Celery worker processes call this (never a web request), and only after
the prefork fork, so torch's thread pool is never forked. A generation worker
keeps the last version it loaded; a training run loads its own trainable copy; a
process that scores completions with a reward model keeps the last frozen backbone it
loaded (:func:`frozen_policy`), until that folder's files change.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import artifacts
from .models import ModelVersion

_lock = threading.Lock()
_cached: dict[tuple[int, str], object] = {}
_frozen_lock = threading.Lock()  # apart from _lock: loading a backbone never holds up generation
_frozen: dict[tuple, object] = {}


def version_dir(version: ModelVersion) -> Path:
    """A local folder holding ``version``'s weights.

    ``weights_path`` is an absolute local folder (versions recorded before names were
    portable, and base models registered from a folder outside ``REWARDLOOP_MODELS_DIR``) or a
    name in the ``models`` storage (:func:`webapp.policies.artifacts.models_folder`): a trained
    version's (``<slug>/run-N``) lies under this machine's models folder with the local
    storage and is fetched into this machine's cache, checked against its manifest's hashes,
    with a remote one. A base version's name is the base model's folder under each machine's
    own ``REWARDLOOP_MODELS_DIR`` with the local storage (no manifest: the app did not write
    it), and its uploaded copy (``<slug>/base``) with a remote one, where this machine's
    models folder is the fallback.

    Raises:
        webapp.policies.artifacts.ArtifactMissing: a stored version without its manifest.
    """
    if version.kind == ModelVersion.Kind.BASE and not os.path.isabs(version.weights_path):
        return _base_version_dir(version.weights_path)
    return artifacts.models_folder(version.weights_path, published=True)


def _base_version_dir(name: str) -> Path:
    # A base the app uploaded (a remote storage: "<slug>/base") is fetched and checked like any
    # version; one named under the models folder (local storage) is this machine's own copy,
    # which the app did not write and so has no manifest.
    own = artifacts.models_folder(name)
    if artifacts.is_local():
        return own
    try:
        return artifacts.folder_fetch(name=name)
    except artifacts.ArtifactMissing:
        if (own / "config.json").is_file():
            return own
        raise


def base_dir(project) -> Path:
    """A local folder holding the project's base model (its version 0, fetched like any version)."""
    base = ModelVersion.objects.filter(project_id=project.pk, number=0).first() if project.pk else None
    return version_dir(base) if base is not None else artifacts.models_folder(project.base_model_path)


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


def _keep_one(slot: dict, lock: threading.Lock, key, load):
    """The frozen policy ``slot`` keeps under ``key``, loaded by ``load()`` (in eval mode) when the
    slot holds another key or none: one policy per slot, so a new key frees the old one."""
    with lock:
        if key not in slot:
            slot.clear()
            policy = load()
            policy.model.eval()
            slot[key] = policy
        return slot[key]


def policy_for_generation(version: ModelVersion):
    """The process-wide cached, frozen policy of ``version`` (one kept at a time)."""
    return _keep_one(_cached, _lock, (version.pk, version.sha256), lambda: policy_load(version, trainable=False))


def folder_stamp(path: Path) -> tuple:
    """What identifies a model folder's contents on this machine without reading them.

    ``(resolved path, folder inode, ((name, size, mtime_ns, inode), ...))`` over the
    folder's top-level files, sorted by name. A model folder written again (pgcore writes
    them atomically: a new folder renamed into place, so new inodes), or any file in it
    replaced or touched, gives another stamp.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path).resolve()
    files = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            files.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return (str(path), path.stat().st_ino, tuple(files))


def frozen_policy(path: Path):
    """The process-wide cached, frozen :class:`pgcore.policy.Policy` of the model folder ``path``.

    Keyed by :func:`folder_stamp`, so repeated reward-model scoring (features of stored
    completions, of fresh samples, of held-out samples) reuses one loaded backbone, and a
    changed folder is loaded again. One folder is kept at a time (a second project's base
    replaces the first). Callers must not train or modify it.

    Loaded on the device :func:`pgcore.precision.select_device` chooses, as
    :func:`policy_load` does.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``REWARDLOOP_DEVICE`` names a device this machine lacks.
    """
    from pgcore.policy import load_policy
    from pgcore.precision import select_device

    device = select_device()
    key = (folder_stamp(path), str(device))
    return _keep_one(_frozen, _frozen_lock, key, lambda: load_policy(path, trainable=False, device=device))
