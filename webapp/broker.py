"""Sending tasks without letting a down broker break the request that asked.

A web request (or a worker) that has already committed its write must not
answer 500 because Redis or the filesystem queue is unreachable. Every send
that a request can reach goes through :func:`task_send`, which returns whether
the message went out; the caller records what happened (a run not yet sent, a
failed export) and says so on the page, and a periodic task re-sends what
never left.

The default broker (``filesystem://``, no server) is kombu's filesystem transport
with the two races of its message files closed: :class:`FilesystemTransport`
(settings name it as ``CELERY_BROKER_TRANSPORT``; the URL stays ``filesystem://``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from queue import Empty

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

from pgcore.atomic import atomic_file

log = logging.getLogger(__name__)

STALE_TEMPORARY_AGE = 600.0  # seconds: a hidden temporary message file older than this lost its writer
SWEEP_INTERVAL = 60.0  # seconds between two sweeps of one channel


def task_send(name: str, *, args: list, queue: str | None = None) -> bool:
    """Publish task ``name`` with positional ``args``; True when the broker accepted the message.

    Never raises for a broker problem (connection refused, timeout, Redis
    error): it logs the error and returns False. How long it tries is
    ``CELERY_BROKER_CONNECTION_TIMEOUT`` and ``CELERY_TASK_PUBLISH_RETRY_POLICY``.
    ``queue`` None: the task's route from ``CELERY_TASK_ROUTES``.
    """
    from webapp.celery import app

    options = {"queue": queue} if queue else {}
    try:
        app.send_task(name, args=args, **options)
    except Exception:  # noqa: BLE001 - kombu raises OperationalError, redis-py its own; all mean "not sent"
        log.exception("could not send %s%s to the broker", name, tuple(args))
        return False
    return True


class FilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel whose readers only ever see whole message files.

    kombu 5.x's ``Channel._put`` creates ``<ms>_<uuid>.<queue>.msg`` empty and then
    writes it, and ``_get`` moves and reads any such file it lists without taking the
    writer's lock: a reader that lists the folder between the two reads an empty or
    partial file, and the ``JSONDecodeError`` stops the worker. (When the temporary
    folder it moves to is on another filesystem, ``shutil.move`` copies instead, and two
    readers can copy the same file into one place.)

    Here ``_put`` writes under a hidden name (``.<name>.<random>.tmp``, which no reader
    lists as a message) and renames it into place (:func:`pgcore.atomic.atomic_file`,
    without fsync, as kombu). ``_get`` claims a file by renaming it within its own folder
    to ``.<name>.claimed``, an atomic step that exactly one reader wins; a reader that
    loses skips the file, as kombu's code intends. A file that still does not parse
    (written by another program) is logged and left as ``.<name>.unreadable`` instead
    of stopping the worker. Message names, ``store_processed`` and ``processed_folder``
    are kombu's. Message files get the umask's permissions, as kombu's did, so a worker
    running as another user of the folder's group can read them.

    A writer killed between creating its hidden file and renaming it leaves the file
    behind; a reader removes such files from ``data_folder_in`` once they are older than
    the transport option ``stale_temporary_age`` (seconds, default 600: a message is
    written in milliseconds), on its first poll and then at most every
    :data:`SWEEP_INTERVAL` seconds, and logs what it removed and how many ``.unreadable``
    files it keeps (they are evidence; remove them by hand).
    """

    _next_sweep = 0.0  # time.monotonic() of the next sweep; 0: on the first poll
    _unreadable_logged = 0  # the number of .unreadable files the last sweep logged
    _unremovable_logged: frozenset[str] = frozenset()  # stale temporary names that could not be removed, logged once

    @property
    def stale_temporary_age(self) -> float:
        """Seconds after its last write that a hidden temporary message file counts as abandoned."""
        return float(self.transport_options.get("stale_temporary_age", STALE_TEMPORARY_AGE))

    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` (a kombu message dict) on ``queue`` as one complete file."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's; read in name order
        path = os.path.join(self.data_folder_out, name)
        try:
            with atomic_file(path, "wb", durable=False) as f:
                f.write(str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc

    def _get(self, queue):
        """Take the oldest message of ``queue``; :class:`queue.Empty` when there is none."""
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL
            self.temporary_files_sweep()
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != f"{queue}.msg":  # kombu's test: hidden names never match
                continue
            claimed = os.path.join(self.data_folder_in, f".{filename}.claimed")
            try:
                os.rename(os.path.join(self.data_folder_in, filename), claimed)
            except FileNotFoundError:
                continue  # another reader took it first
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
                message = loads(bytes_to_str(payload))
            except ValueError:
                log.error("broker message %s is not JSON; kept as .%s.unreadable", filename, filename)
                os.replace(claimed, os.path.join(self.data_folder_in, f".{filename}.unreadable"))
                continue
            except OSError as exc:
                raise ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
            if self.store_processed:
                os.makedirs(self.processed_folder, exist_ok=True)
                shutil.move(claimed, os.path.join(self.processed_folder, filename))
            else:
                os.remove(claimed)
            return message
        raise Empty()

    def temporary_files_sweep(self) -> list[str]:
        """Remove ``data_folder_in``'s hidden temporary files (``.<name>.<random>.tmp``) last
        written more than ``stale_temporary_age`` seconds ago; returns the names removed.

        Logs the removed names (warning), and the number of ``.unreadable`` files kept
        whenever it differs from the last one logged. Claimed files (``.<name>.claimed``)
        are left alone: a claim renames without touching the file's times, so their age
        says nothing about the reader. Never raises for a file it cannot remove (another process
        removed it first; a folder of that name, another user's file in a sticky folder: each
        such name logged once, as a warning, and left in place).
        """
        folder = self.data_folder_in
        cutoff = time.time() - self.stale_temporary_age
        removed, unreadable = [], 0
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if not entry.name.startswith("."):
                continue
            if entry.name.endswith(".unreadable"):
                unreadable += 1
                continue
            if not entry.name.endswith(".tmp"):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.remove(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:
                continue  # renamed into place or removed by another reader meanwhile
            except OSError as exc:  # a folder of that name (IsADirectoryError), a sticky folder (PermissionError)
                if entry.name not in self._unremovable_logged:
                    self._unremovable_logged = self._unremovable_logged | {entry.name}
                    log.warning("cannot remove stale broker temporary file %s from %s, left in place: %s",
                                entry.name, folder, exc)  # fmt: skip
        if removed:
            log.warning(
                "removed %d broker temporary file(s) older than %g s from %s (their writers stopped before "
                "renaming them into place): %s",
                len(removed), self.stale_temporary_age, folder, ", ".join(sorted(removed)),
            )  # fmt: skip
        if unreadable != self._unreadable_logged:
            log.warning("%d unreadable broker message(s) kept in %s as .<name>.unreadable", unreadable, folder)
            self._unreadable_logged = unreadable
        return removed


class FilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport with :class:`FilesystemChannel` (``polling_interval`` etc. as kombu's)."""

    Channel = FilesystemChannel
