"""Atomic writes: the one helper every artifact writer uses (standard library only, no torch).

A file is written to a uniquely named temporary sibling, flushed and fsynced, moved over
its final name with ``os.replace`` (atomic on POSIX within one filesystem) and its folder
fsynced, so a reader sees the old file or the whole new one, never half of it, and a
crash leaves at most a ``.<name>.<random>.tmp`` sibling behind. Two writers of the same
name never share a temporary file; the last rename wins.

A folder is written the same way by :func:`atomic_directory`: a temporary sibling folder
is filled, fsynced (files, then folders) and renamed into place.

Files and folders get the permissions ``open`` and ``os.mkdir`` give a new one (0o666 and
0o777 less the process's umask, and a folder's default ACL where there is one), not
``tempfile``'s owner-only 0o600 and 0o700: a process running as another user of a shared
folder's group (a Celery worker reading broker messages or model versions) can read them.

Source: the POSIX ``rename(2)`` guarantee; the fsync-the-directory rule from
``fsync(2)`` ("an explicit fsync() on a file descriptor for the directory is also needed").
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_directory", "atomic_file", "atomic_write", "fsync_dir", "fsync_tree"]


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder, so a rename or a new entry in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: str | os.PathLike) -> None:
    """fsync every file under ``directory``, then every folder (deepest first is not needed: each is synced)."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def _new_sibling(folder: Path, prefix: str, suffix: str, create: Callable[[str], int | None]) -> tuple[str, int | None]:
    """Create ``<prefix><random><suffix>`` in ``folder`` with ``create(name)``, which must raise
    ``FileExistsError`` for a name in use; returns (name, what ``create`` returned). Named as
    ``tempfile.mkstemp`` names, but ``create`` chooses the permissions."""
    for _ in range(100):
        name = str(folder / f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            return name, create(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name {prefix}*{suffix} in {folder}")


_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, durable: bool = True
) -> Iterator[IO]:
    """Yield an open temporary file next to ``path``; when the block ends without error it becomes ``path``.

    Args:
        path: the final file name; its parent folder is created if missing.
        mode: ``"wb"`` (default) or ``"w"`` (text; ``encoding`` defaults to UTF-8).
        durable: False skips both fsyncs (about 20 ms on this machine's disk): a reader
            still sees the whole file or none, but a power cut may lose it. For short-lived
            files such as broker messages.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Raises:
        ValueError: a mode other than ``"wb"`` or ``"w"``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes with mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _new_sibling(path.parent, f".{path.name}.", ".tmp", lambda name: os.open(name, _OPEN_NEW, 0o666))
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see :func:`atomic_file`); returns ``path``."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(
    out_dir: str | os.PathLike, *, before_commit: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder next to ``out_dir``; when the block ends without error it becomes ``out_dir``.

    ``before_commit(tmp)`` runs after the block and before anything is synced (to add a
    checksum record, say). The files are fsynced, the folder is moved in place with
    ``os.replace``, then the parent is fsynced. An existing ``out_dir`` is swapped out and
    deleted only after the new one is in place. On any exception the temporary folder is
    removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_new_sibling(out_dir.parent, f".{out_dir.name}.tmp-", "", os.mkdir)[0])
    try:
        yield tmp
        if before_commit is not None:
            before_commit(tmp)
        fsync_tree(tmp)
        old = None
        if out_dir.exists():
            old = Path(_new_sibling(out_dir.parent, f".{out_dir.name}.old-", "", os.mkdir)[0])
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
