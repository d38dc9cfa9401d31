"""Artifacts (model versions, reward models, version exports, plots) through Django's storage API.

Each kind of artifact has a storage in ``settings.STORAGES``: ``models``, ``exports`` and
``plots``. By default they are :class:`LocalArtifactStorage` folders (``REWARDLOOP_MODELS_DIR``,
``REWARDLOOP_EXPORTS_DIR``, ``DATA_DIR/plots``), written atomically; with
``REWARDLOOP_S3_BUCKET`` set they are django-storages' ``S3Storage`` under one bucket
(prefixes ``models/``, ``exports/``, ``plots/``), so no two machines need a shared folder.

A *folder* artifact (a model version, a reward model) is published file by file and then a
``manifest.json`` naming each file's SHA-256 and size, written last: a folder without its
manifest is incomplete and no reader uses it (:class:`ArtifactMissing`). A worker that needs
one fetches it with :func:`folder_fetch` into its own cache (``REWARDLOOP_CACHE_DIR``),
checks every file against the manifest's hashes, and moves the folder into place whole
with one rename (the first of two concurrent fetches wins; the other uses its folder). With a local storage the folder is read where it
lies (the local default behaves as it always did: the atomic rename makes it visible).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, Storage, storages

from pgcore.atomic import atomic_file, fsync_dir, fsync_tree

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAMP = ".stamp.json"  # in a cache entry: each file's size and mtime when its hash was last checked
KINDS = ("models", "exports", "plots")
_CHUNK = 1 << 20


class ArtifactMissing(FileNotFoundError):
    """The artifact is absent or incomplete (no manifest yet), or a fetched file fails its hash."""


class LocalArtifactStorage(FileSystemStorage):
    """A folder named by a setting (read at each use, so a changed setting is followed), written atomically.

    ``setting``: the name of a ``settings`` attribute holding a folder; ``subdir``: a
    folder under it. Files are written with :func:`pgcore.atomic.atomic_file` (temporary
    sibling, fsync, rename) and overwrite an existing name, as S3 does.
    """

    def __init__(self, setting: str = "REWARDLOOP_MODELS_DIR", subdir: str = "", **kwargs):
        self._setting, self._subdir = setting, subdir
        kwargs.setdefault("allow_overwrite", True)
        super().__init__(**kwargs)

    @property
    def base_location(self):  # noqa: D401 - overrides FileSystemStorage's cached property
        return str(Path(getattr(settings, self._setting)) / self._subdir)

    @property
    def location(self):
        return os.path.abspath(self.base_location)

    def _save(self, name, content):
        path = self.path(name)
        with atomic_file(path) as f:
            if hasattr(content, "chunks"):
                for chunk in content.chunks():
                    f.write(chunk if isinstance(chunk, bytes) else chunk.encode())
            else:
                f.write(content.read())
        return name


def storage(kind: str = "models") -> Storage:
    """The configured storage of ``kind`` (``models``, ``exports`` or ``plots``).

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; one of {KINDS}")
    return storages[kind]


def is_local(kind: str = "models") -> bool:
    """Whether ``kind``'s storage is a folder on this machine (so files can be used where they lie)."""
    return isinstance(storage(kind), FileSystemStorage)


def local_path(name: str, kind: str = "models") -> Path | None:
    """Where ``name`` lies on this machine, or None for a remote storage."""
    st = storage(kind)
    return Path(st.path(name)) if isinstance(st, FileSystemStorage) else None


def models_name(folder: str | Path) -> str:
    """How to record the local model folder ``folder`` so that every machine finds its own copy.

    A folder under ``REWARDLOOP_MODELS_DIR`` is recorded by its path there (``"smollm2-135m-instruct"``,
    POSIX separators), which :func:`models_folder` resolves under each machine's own models folder;
    any other folder by its absolute path, found only where that path exists (with a remote
    ``models`` storage the base model is uploaded anyway, so no worker needs it).
    """
    folder = Path(folder).expanduser().resolve()
    try:
        return folder.relative_to(Path(settings.REWARDLOOP_MODELS_DIR).expanduser().resolve()).as_posix()
    except ValueError:
        return str(folder)


def models_folder(ref: str, *, published: bool = False) -> Path:
    """This machine's folder for a recorded model folder reference.

    An absolute path is used as it is (folders outside the models folder, and folders the app
    wrote before it recorded names). A name is resolved on this machine:

    - ``published=False``: a folder recorded by :func:`models_name` (a base model, which the
      app did not write and so has no manifest), under this machine's ``REWARDLOOP_MODELS_DIR``;
    - ``published=True``: a folder the app published in the ``models`` storage with its
      manifest (a trained version ``<slug>/run-N``, a reward model
      ``<slug>/reward-models/rm-…``), through :func:`folder_fetch`: with the local storage
      where it lies under this machine's models folder, with a remote one this machine's
      cached copy, checked by hash.

    Raises:
        ArtifactMissing: ``published`` and the folder has no manifest (absent or incomplete).
    """
    if os.path.isabs(ref):
        return Path(ref)
    if published:
        return folder_fetch(name=ref)
    return Path(settings.REWARDLOOP_MODELS_DIR) / ref


def cache_dir() -> Path:
    """This machine's artifact cache (``REWARDLOOP_CACHE_DIR``; default ``DATA_DIR/cache``)."""
    return Path(getattr(settings, "REWARDLOOP_CACHE_DIR", Path(settings.DATA_DIR) / "cache"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_of(folder: Path) -> dict:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(folder).as_posix()] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    manifest = {"files": files}
    checksum = folder / "pgcore_checksum.json"  # the weights' digest pgcore recorded as it wrote them
    if checksum.is_file():
        manifest["weights_sha256"] = json.loads(checksum.read_text())["sha256"]
    manifest["sha256"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return manifest


def put_bytes(name: str, data: bytes, kind: str) -> str:
    """Write ``data`` as ``name`` (replacing it); atomic on both backends. Returns ``name``."""
    st = storage(kind)
    if not isinstance(st, FileSystemStorage) and st.exists(name):
        st.delete(name)  # S3Storage overwrites anyway; this keeps other backends from renaming
    return st.save(name, ContentFile(data))


def get_bytes(name: str, kind: str) -> bytes | None:
    """The content of ``name``, or None when it does not exist."""
    try:
        with storage(kind).open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:  # S3Storage raises its own errors for a missing key
        if "NoSuchKey" in repr(exc) or "404" in repr(exc):
            return None
        raise


def file_publish(*, source: Path, name: str, kind: str) -> str:
    """Move the local file ``source`` into ``kind``'s storage as ``name`` (whole or not at all); returns
    what to record: the local path (local storage: one rename, then the folder fsynced) or ``name``."""
    target = local_path(name, kind)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        fsync_dir(target.parent)
        return str(target)
    st = storage(kind)
    if st.exists(name):
        st.delete(name)
    with open(source, "rb") as f:
        st.save(name, File(f, name=Path(name).name))
    return name


def ref_exists(ref: str, kind: str) -> bool:
    """Whether a recorded artifact file (a local path or a storage name) is there."""
    return Path(ref).is_file() if os.path.isabs(ref) else storage(kind).exists(ref)


def ref_open(ref: str, kind: str):
    """Open a recorded artifact file (a local path or a storage name) for reading bytes.

    Raises:
        OSError: it is gone.
    """
    if os.path.isabs(ref):
        return open(ref, "rb")  # noqa: SIM115 - the caller closes it
    if not storage(kind).exists(ref):
        raise FileNotFoundError(ref)
    return storage(kind).open(ref, "rb")


def ref_size(ref: str, kind: str) -> int:
    return Path(ref).stat().st_size if os.path.isabs(ref) else storage(kind).size(ref)


def manifest_write(name: str, kind: str = "models") -> dict:
    """Write the manifest of the local folder ``name`` of a local storage (its files are already there)."""
    folder = local_path(name, kind)
    manifest = _manifest_of(folder)
    put_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode(), kind)
    return manifest


def folder_publish(*, source: Path, name: str, kind: str = "models") -> dict:
    """Store every file of the local folder ``source`` under ``name``, then its manifest (last); returns it.

    Until the manifest is written the folder is invisible to :func:`folder_fetch`. Publishing
    again replaces the files and the manifest. A local storage whose folder ``name`` *is*
    ``source`` only gets its manifest.

    Raises:
        ArtifactMissing: ``source`` is not a folder.
    """
    source = Path(source)
    if not source.is_dir():
        raise ArtifactMissing(f"cannot publish {source}: not a folder")
    manifest = _manifest_of(source)
    st = storage(kind)
    target = local_path(name, kind)
    if target is None or target.resolve() != source.resolve():
        for rel in manifest["files"]:
            stored = f"{name}/{rel}"
            if not isinstance(st, FileSystemStorage) and st.exists(stored):
                st.delete(stored)
            with open(source / rel, "rb") as f:
                st.save(stored, File(f, name=rel))
    put_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode(), kind)
    return manifest


def manifest_read(name: str, kind: str = "models") -> dict:
    """The manifest of folder ``name``.

    Raises:
        ArtifactMissing: no manifest (absent, or not completely written yet).
    """
    data = get_bytes(f"{name}/{MANIFEST}", kind)
    if data is None:
        raise ArtifactMissing(f"{kind}/{name} is missing or incomplete (no {MANIFEST})")
    return json.loads(data)


def folder_fetch(*, name: str, kind: str = "models") -> Path:
    """A local folder holding artifact ``name``: where it lies (local storage) or this machine's cached copy.

    A remote folder is downloaded into ``cache_dir()/<kind>/<name>@<manifest sha256[:16]>``,
    each file checked against the manifest's SHA-256, fsynced and moved into place whole with
    one rename (two processes fetching at once: the first folder stays, the second is
    dropped); a later call finds it there. There each file's size and mtime are compared with
    those recorded when its hash was checked; a file that changed is hashed again, and an
    entry with a file that no longer matches the manifest is discarded and fetched again.

    Raises:
        ArtifactMissing: no manifest, or a downloaded file whose hash differs.
    """
    manifest = manifest_read(name, kind)
    local = local_path(name, kind)
    if local is not None:
        return local
    safe = name.strip("/").replace("/", "__")
    target = cache_dir() / kind / f"{safe}@{manifest['sha256'][:16]}"
    if _cached_ok(target, manifest):
        return target
    if target.exists():  # a cached file changed and no longer matches its hash: fetch the folder again
        log.warning("cached %s/%s in %s no longer matches its manifest; fetching it again", kind, name, target)
        _discard(target)
    st = storage(kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for rel, meta in manifest["files"].items():
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with st.open(f"{name}/{rel}", "rb") as src, open(out, "wb") as dst:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    h.update(block)
                    dst.write(block)
            if h.hexdigest() != meta["sha256"]:
                raise ArtifactMissing(f"{kind}/{name}/{rel} has sha256 {h.hexdigest()}, manifest says {meta['sha256']}")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _stamp_write(tmp, _stamps(tmp, manifest))  # what each file looked like when its hash was checked
        fsync_tree(tmp)
        try:
            os.rename(tmp, target)  # refused when another process put the same folder there first: keep theirs
        except OSError:
            if not _cached_ok(target, manifest):
                raise
            return target
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %s/%s into %s", kind, name, target)
    return target


def _stamps(folder: Path, manifest: dict) -> dict[str, list[int]]:
    """``{relative name: [size in bytes, mtime in ns]}`` of each manifest file in ``folder`` now."""
    out = {}
    for rel in manifest["files"]:
        st = (folder / rel).stat()
        out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _stamp_write(folder: Path, stamps: dict[str, list[int]]) -> None:
    with atomic_file(folder / STAMP) as f:
        f.write(json.dumps(stamps, sort_keys=True).encode())


def _cached_ok(folder: Path, manifest: dict) -> bool:
    """Whether the cache entry ``folder`` holds every file of ``manifest`` with its content.

    A file whose size and mtime are those recorded in the entry's stamp when its hash was
    last checked is trusted without reading it; any other (touched, rewritten, truncated,
    or an entry without a stamp) is hashed again and compared with the manifest. The stamp
    is updated for files that still match. Cost: one ``stat`` per file when nothing changed.
    """
    if not (folder / MANIFEST).is_file():
        return False
    try:
        recorded = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        recorded = {}
    try:
        now = _stamps(folder, manifest)
    except FileNotFoundError:
        return False
    rechecked = False
    for rel, meta in manifest["files"].items():
        if recorded.get(rel) == now[rel]:
            continue
        if now[rel][0] != meta["size"] or file_sha256(folder / rel) != meta["sha256"]:
            return False
        rechecked = True
    if rechecked:
        try:
            _stamp_write(folder, now)
        except OSError:  # a read-only cache still serves; the next check hashes again
            pass
    return True


def _discard(folder: Path) -> None:
    """Remove a cache entry: renamed aside first (one step), so no reader finds it half deleted."""
    aside = folder.parent / f".{folder.name}.stale-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def folder_delete(name: str, kind: str = "models") -> None:
    """Delete folder ``name`` from its storage (manifest first, so it is never half-visible)."""
    local = local_path(name, kind)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    st = storage(kind)
    try:
        manifest = manifest_read(name, kind)
        rels = list(manifest["files"])
    except ArtifactMissing:
        rels = []
    st.delete(f"{name}/{MANIFEST}")
    try:
        _dirs, files = st.listdir(name)
        rels = sorted(set(rels) | set(files))
    except (FileNotFoundError, NotImplementedError):
        pass
    for rel in rels:
        st.delete(f"{name}/{rel}")
