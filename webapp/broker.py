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
    are kombu's.
    """

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


class FilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport with :class:`FilesystemChannel` (``polling_interval`` etc. as kombu's)."""

    Channel = FilesystemChannel
