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
    """Load ``version`` as a :class:`pgcore.policy.Policy`.

    LoRA versions load the project's base model plus the version's adapter,
    whose sha256 is checked first (``pgcore.policy.ChecksumError`` on mismatch).
    """
    from pgcore.policy import load_policy, verify_weights

    base_path, adapter_path, sha = _paths(version)
    if version.kind == ModelVersion.Kind.FULL and version.sha256:
        verify_weights(base_path, version.sha256)
    return load_policy(base_path, adapter_path, config=config, trainable=trainable, expected_sha256=sha)


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

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    from pgcore.policy import load_policy

    key = folder_stamp(path)
    with _frozen_lock:
        if key not in _frozen:
            _frozen.clear()
            policy = load_policy(path, trainable=False)
            policy.model.eval()
            _frozen[key] = policy
        return _frozen[key]
