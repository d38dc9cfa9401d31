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

import functools
import hashlib
import logging
import os
import re
import shutil
import socket
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
STALE_CLAIM_AGE = 3600.0  # seconds: another machine's claim older than this lost its reader
MIN_CLAIM_AGE = 60.0  # seconds: no claim younger than this is given back (a reader holds one for milliseconds)
SWEEP_INTERVAL = 60.0  # seconds between two sweeps of one channel

# ".<message name>.<pid>@<host>+<namespace>.claimed"; a claim named by kombu's readers or by this module
# before it named its reader is ".<message name>.claimed" (no owner), and one of the version before it
# named the reader's process namespace ".<message name>.<pid>@<host>.claimed": both given back only once old.
_CLAIM = re.compile(
    r"\.(?P<message>.+\.msg)(?:\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+?)(?:\+(?P<namespace>[0-9a-f]+))?)?\.claimed"
)


def _host_name() -> str:
    """This machine's name as a claim carries it: letters, digits, '.', '_' and '-', at most 64."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "localhost"


@functools.cache
def _pid_namespace() -> str:
    """Which process ids this process's ``os.kill`` sees, as a claim carries it: 12 hex digits.

    A digest of the kernel's boot id (``/proc/sys/kernel/random/boot_id``) and the inode of this
    process's PID namespace (``/proc/self/ns/pid``): two containers with one host name (or one
    machine after a reboot) name their processes apart. Where /proc has neither (not Linux) the
    digest of nothing: one namespace per host name, as ``os.kill`` sees it there.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.blake2s(f"{boot}/{namespace}".encode(), digest_size=6).hexdigest()


def _process_alive(pid: str) -> bool:
    """Whether a process of id ``pid`` (decimal digits) exists in this process's PID namespace (one of
    another user's counts: EPERM); False for an id no process can have (0, too many digits)."""
    try:
        number = int(pid)
        if number <= 0:  # os.kill(0, ...) would signal our own process group
            return False
        os.kill(number, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


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
    to ``.<name>.<pid>@<host>+<namespace>.claimed`` (the reader's process id, machine name
    and :func:`_pid_namespace`), an atomic step that exactly one reader wins; a reader that
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

    A reader killed between claiming a message and removing it would strand the message
    (no reader lists a hidden name): the same sweep renames such claims back to the
    message's name, where the next poll reads it. No claim is given back before it is
    ``min_claim_age`` seconds old (transport option, default 60), counted from the claim's
    rename (its ``st_ctime``; its ``st_mtime`` is still the writer's). Then a claim of this
    machine and PID namespace is given back once its process is gone; another machine's or
    namespace's (several may share the folder; their process ids mean nothing here) only
    once older than the transport option ``stale_claim_age`` (default 3600), as is one of
    ours whose process id was reused, and an owner-less claim of an earlier version. A
    reader whose claim was given back all the same (it held it past ``min_claim_age``)
    reads nothing from it and goes on: the message is on the queue again.
    """

    _next_sweep = 0.0  # time.monotonic() of the next sweep; 0: on the first poll
    _unreadable_logged = 0  # the number of .unreadable files the last sweep logged
    _unremovable_logged: frozenset[str] = frozenset()  # stale names not removed or given back, logged once

    @property
    def stale_temporary_age(self) -> float:
        """Seconds after its last write that a hidden temporary message file counts as abandoned."""
        return float(self.transport_options.get("stale_temporary_age", STALE_TEMPORARY_AGE))

    @property
    def stale_claim_age(self) -> float:
        """Seconds after its claim that a claimed message of another machine counts as abandoned."""
        return float(self.transport_options.get("stale_claim_age", STALE_CLAIM_AGE))

    @property
    def min_claim_age(self) -> float:
        """Seconds after its claim before which no claimed message is given back, its reader gone or not."""
        return float(self.transport_options.get("min_claim_age", MIN_CLAIM_AGE))

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
            entries = self._inbox_entries()  # one listing serves both sweeps: their names never overlap
            self.temporary_files_sweep(entries)
            self.stale_claims_give_back(entries)
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != f"{queue}.msg":  # kombu's test: hidden names never match
                continue
            claimed = os.path.join(
                self.data_folder_in, f".{filename}.{os.getpid()}@{_host_name()}+{_pid_namespace()}.claimed"
            )
            try:
                os.rename(os.path.join(self.data_folder_in, filename), claimed)
            except FileNotFoundError:
                continue  # another reader took it first
            try:
                message = self._claimed_take(claimed, filename)
            except FileNotFoundError:  # a sweep gave the claim back meanwhile: the message is on the queue again
                log.warning("broker claim %s in %s was given back while its reader held it; left on the queue",
                            os.path.basename(claimed), self.data_folder_in)  # fmt: skip
                continue
            if message is not None:
                return message
        raise Empty()

    def _claimed_take(self, claimed: str, filename: str) -> dict | None:
        """Read and remove (or store) our claim ``claimed`` of message ``filename``: its message dict,
        or None for a file that is not JSON (kept as ``.<filename>.unreadable``).

        Raises:
            FileNotFoundError: the claim is gone (given back by a sweep; nothing was taken).
            ChannelError: it cannot be read for another reason (an OSError removing it is raised as is).
        """
        try:
            with open(claimed, "rb") as f:
                payload = f.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
        try:
            message = loads(bytes_to_str(payload))
        except ValueError:
            log.error("broker message %s is not JSON; kept as .%s.unreadable", filename, filename)
            os.replace(claimed, os.path.join(self.data_folder_in, f".{filename}.unreadable"))
            return None
        if self.store_processed:
            os.makedirs(self.processed_folder, exist_ok=True)
            shutil.move(claimed, os.path.join(self.processed_folder, filename))
        else:
            os.remove(claimed)
        return message

    def _inbox_entries(self) -> list[os.DirEntry]:
        """``data_folder_in``'s entries as one ``os.scandir`` lists them; [] when the folder is gone."""
        try:
            with os.scandir(self.data_folder_in) as entries:
                return list(entries)
        except FileNotFoundError:
            return []

    def temporary_files_sweep(self, entries: list[os.DirEntry] | None = None) -> list[str]:
        """Remove ``data_folder_in``'s hidden temporary files (``.<name>.<random>.tmp``) last
        written more than ``stale_temporary_age`` seconds ago; returns the names removed.
        ``entries``: the folder's listing (:meth:`_inbox_entries`, shared with the claims' sweep);
        None: list it now.

        Logs the removed names (warning), and the number of ``.unreadable`` files kept
        whenever it differs from the last one logged. Claimed files (``.<name>….claimed``)
        are :meth:`stale_claims_give_back`'s. Never raises for a file it cannot remove (another process
        removed it first; a folder of that name, another user's file in a sticky folder: each
        such name logged once, as a warning, and left in place).
        """
        folder = self.data_folder_in
        cutoff = time.time() - self.stale_temporary_age
        removed, unreadable = [], 0
        for entry in self._inbox_entries() if entries is None else entries:
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
                self._warn_once(entry.name, "cannot remove stale broker temporary file %s from %s, left in place: %s",
                                folder, exc)  # fmt: skip
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

    def _warn_once(self, name: str, message: str, *args) -> None:
        """Log ``message % (name, *args)`` as a warning the first time this channel meets ``name``."""
        if name not in self._unremovable_logged:
            self._unremovable_logged = self._unremovable_logged | {name}
            log.warning(message, name, *args)

    def stale_claims_give_back(self, entries: list[os.DirEntry] | None = None) -> list[str]:
        """Rename ``data_folder_in``'s abandoned claims (``.<name>.<pid>@<host>+<namespace>.claimed``)
        back to ``<name>``, so the message is read again; returns the claim names given back.
        ``entries``: the folder's listing (:meth:`_inbox_entries`); None: list it now.

        Ages count from the claim's rename (``st_ctime``, which a rename sets; seconds). No claim
        younger than ``min_claim_age`` is abandoned. Abandoned: a claim of this machine and PID
        namespace whose process ``pid`` is gone (a reader killed between its claim and removing
        the file, which never handed the message over), or any claim older than
        ``stale_claim_age`` (another machine's or namespace's, whose processes cannot be seen
        from here; a reused ``pid``; an owner-less ``.<name>.claimed``; one of an earlier
        version without ``+<namespace>``). Two sweepers give a claim back once (the rename is
        atomic). Logs the names given back (warning); never raises for a file it cannot rename
        (logged once, left in place).
        """
        folder, host, namespace = self.data_folder_in, _host_name(), _pid_namespace()
        now = time.time()
        given_back = []
        for entry in self._inbox_entries() if entries is None else entries:
            claim = _CLAIM.fullmatch(entry.name)
            if claim is None:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                age = now - entry.stat(follow_symlinks=False).st_ctime
                if age < self.min_claim_age:
                    continue  # its reader may still be reading it (or be in another namespace with our pid)
                ours = claim["host"] == host and claim["namespace"] == namespace
                reader_gone = ours and not _process_alive(claim["pid"])
                if not reader_gone and age < self.stale_claim_age:
                    continue
                os.rename(entry.path, os.path.join(folder, claim["message"]))
                given_back.append(entry.name)
            except FileNotFoundError:
                continue  # read and removed by its reader, or given back by another sweeper, meanwhile
            except OSError as exc:  # a sticky folder (PermissionError)
                self._warn_once(entry.name, "cannot give back abandoned broker claim %s in %s, left in place: %s",
                                folder, exc)  # fmt: skip
        if given_back:
            log.warning(
                "gave back %d broker message(s) whose reader stopped between claiming and reading them, in %s: %s",
                len(given_back), folder, ", ".join(sorted(given_back)),
            )  # fmt: skip
        return given_back


class FilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport with :class:`FilesystemChannel` (``polling_interval`` etc. as kombu's)."""

    Channel = FilesystemChannel
