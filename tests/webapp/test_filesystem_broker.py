"""The filesystem broker (webapp/broker.py) under concurrent writers and readers: real processes, a real folder.

kombu's own filesystem transport fails the first test: a reader that lists the queue
folder while a writer is between creating a message file and writing it reads an empty
or partial file (``JSONDecodeError``), which stops a Celery worker.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from kombu import Connection

from webapp.broker import FilesystemTransport
from webapp.celery import app

TRANSPORT = "webapp.broker:FilesystemTransport"
QUEUE = "race"


def _connection(folder: Path, transport: str = TRANSPORT) -> Connection:
    queue = str(folder / "queue")
    options = {"data_folder_in": queue, "data_folder_out": queue, "control_folder": str(folder / "control")}
    return Connection("filesystem://", transport=transport, transport_options=options)


def _publish(folder: str, transport: str, indexes: list[int], pad: int) -> None:
    """Publish ``{"i": i, "pad": "x" * pad}`` for every ``i``, as fast as the disk allows."""
    with _connection(Path(folder), transport) as conn:
        producer = conn.Producer(serializer="json")
        for i in indexes:
            producer.publish({"i": i, "pad": "x" * pad}, routing_key=QUEUE)


def _consume(folder: str, transport: str, stop, results) -> None:
    """Take messages in a tight loop (no sleep) until ``stop`` is set; put (indexes, error) on ``results``."""
    got, error = [], None
    try:
        with _connection(Path(folder), transport) as conn:
            queue = conn.SimpleQueue(QUEUE)
            while True:
                try:
                    message = queue.get_nowait()
                except queue.Empty:
                    if stop.is_set():
                        break
                    continue
                body = message.payload
                assert len(body["pad"]) > 0
                got.append(body["i"])
                message.ack()
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        error = repr(exc)
    results.put((got, error))


def race(folder: Path, transport: str, *, writers: int = 2, readers: int = 2, per_writer: int = 400, pad: int = 64_000):
    """Run ``writers`` publishing and ``readers`` consuming processes at once; return (indexes read, errors)."""
    (folder / "queue").mkdir(parents=True)
    (folder / "control").mkdir()
    ctx = multiprocessing.get_context("fork")
    stop, results = ctx.Event(), ctx.Queue()
    consumers = [ctx.Process(target=_consume, args=(str(folder), transport, stop, results)) for _ in range(readers)]
    for p in consumers:
        p.start()
    producers = [
        ctx.Process(target=_publish, args=(str(folder), transport, list(range(w, writers * per_writer, writers)), pad))
        for w in range(writers)
    ]
    for p in producers:
        p.start()
    for p in producers:
        p.join(60)
    deadline = time.monotonic() + 30
    while any(name.endswith(f".{QUEUE}.msg") for name in os.listdir(folder / "queue")):
        if time.monotonic() > deadline or not any(p.is_alive() for p in consumers):
            break
        time.sleep(0.05)
    stop.set()
    read, errors = [], []
    for _ in consumers:
        got, error = results.get(timeout=30)
        read += got
        errors += [error] if error else []
    for p in consumers:
        p.join(10)
    return read, errors


def test_readers_polling_in_a_tight_loop_read_every_message_whole_and_once(tmp_path):
    read, errors = race(tmp_path, TRANSPORT)

    assert errors == []
    assert sorted(read) == list(range(800))  # none lost, none twice
    assert os.listdir(tmp_path / "queue") == []  # no temporary or claimed file left behind


def test_a_message_file_that_is_not_json_is_set_aside_and_the_next_one_is_read(tmp_path):
    with _connection(tmp_path) as conn:
        (tmp_path / "queue").mkdir()
        (tmp_path / "control").mkdir()
        (tmp_path / "queue" / f"0_broken.{QUEUE}.msg").write_bytes(b'{"body": "tru')  # another program's
        conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
        queue = conn.SimpleQueue(QUEUE)

        message = queue.get(timeout=2)

        assert message.payload == {"i": 7}
        assert os.listdir(tmp_path / "queue") == [f".0_broken.{QUEUE}.msg.unreadable"]
        message.ack()
        queue.close()


def test_the_apps_filesystem_url_uses_the_safe_transport_and_polls_every_tenth_of_a_second():
    if not app.conf.broker_url.startswith("filesystem://"):
        return  # the Redis leg: nothing of ours in the way
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, FilesystemTransport)
        assert conn.transport.polling_interval == 0.1
