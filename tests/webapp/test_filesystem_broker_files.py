"""The filesystem broker's files on disk (webapp/broker.py): their permissions, and what a killed writer or
reader leaves.

Real folders, real processes: a reader running as another user, a writer or a reader killed with SIGKILL.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from kombu import Connection

TRANSPORT = "webapp.broker:FilesystemTransport"
QUEUE = "files"
NOBODY = 65534


def _connection(folder: Path, **options) -> Connection:
    queue = str(folder / "queue")
    options = {"data_folder_in": queue, "data_folder_out": queue, "control_folder": str(folder / "control"), **options}
    return Connection("filesystem://", transport=TRANSPORT, transport_options=options)


def _folders(folder: Path) -> Path:
    (folder / "queue").mkdir(parents=True)
    (folder / "control").mkdir()
    return folder / "queue"



def test_message_files_get_the_umasks_permissions_like_any_new_file(tmp_path):
    queue = _folders(tmp_path)
    old = os.umask(0o027)
    try:
        with _connection(tmp_path) as conn:
            conn.Producer(serializer="json").publish({"i": 1}, routing_key=QUEUE)
        (plain := tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    [message] = [p for p in queue.iterdir() if p.name.endswith(f".{QUEUE}.msg")]
    assert stat.S_IMODE(message.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o640


def _consume_as(uid: int, gid: int, folder: str, results) -> None:
    """In a forked child: drop to ``uid``/``gid`` and take one message; put (payload, error) on ``results``."""
    try:
        os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)
        with _connection(Path(folder)) as conn:
            queue = conn.SimpleQueue(QUEUE)
            message = queue.get(timeout=2)
            message.ack()
            results.put((message.payload, None))
            queue.close()
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        results.put((None, repr(exc)))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the reader as another user")
def test_a_worker_running_as_another_user_of_the_folders_group_reads_the_message():
    # The shared setup: a setgid folder of a group both users are in, umask 002. With the
    # message file created 0600 the other user could claim (rename) it, then failed to open it:
    # PermissionError, the worker's channel error, and the message left behind as .claimed.
    shared = Path(tempfile.mkdtemp(prefix="rewardloop-shared-broker-", dir="/tmp"))
    try:
        os.chmod(shared, 0o2770)  # group root: the reader joins it below
        old = os.umask(0o002)
        try:
            queue = _folders(shared)
            with _connection(shared) as conn:
                conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
        finally:
            os.umask(old)
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        reader = ctx.Process(target=_consume_as, args=(NOBODY, 0, str(shared), results))
        reader.start()
        payload, error = results.get(timeout=30)
        reader.join(10)

        assert error is None, error
        assert payload == {"i": 7}
        assert sorted(os.listdir(queue)) == []  # nothing left claimed
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _writer_killed_mid_write(path: Path) -> None:
    """Run a writer in another process that SIGKILLs itself after writing half a message to its hidden file."""
    code = (
        "import os, signal\n"
        "from pgcore.atomic import atomic_file\n"
        f"with atomic_file({str(path)!r}, 'wb', durable=False) as f:\n"  # as FilesystemChannel._put writes
        "    f.write(b'{\"body\": \"eyJ'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), check=False)
    assert proc.returncode == -signal.SIGKILL


def _publish_and_take_one(conn: Connection) -> dict:
    """Publish ``{"i": 7}`` on the queue and take it back as a worker does (its first poll sweeps); the payload."""
    conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
    simple = conn.SimpleQueue(QUEUE)
    message = simple.get(timeout=2)
    message.ack()
    simple.close()
    return message.payload


def test_a_worker_removes_temporary_files_of_killed_writers_once_old_and_keeps_unreadable_ones(tmp_path, caplog):
    queue = _folders(tmp_path)
    for name in ("1_old", "2_new"):
        _writer_killed_mid_write(queue / f"{name}.{QUEUE}.msg")
    [old_tmp] = queue.glob(f".1_old.{QUEUE}.msg.*.tmp")
    [new_tmp] = queue.glob(f".2_new.{QUEUE}.msg.*.tmp")
    eleven_minutes_ago = time.time() - 660
    os.utime(old_tmp, (eleven_minutes_ago, eleven_minutes_ago))
    evidence = queue / f".0_broken.{QUEUE}.msg.unreadable"
    evidence.write_bytes(b'{"body": "tru')
    os.utime(evidence, (eleven_minutes_ago, eleven_minutes_ago))

    with caplog.at_level(logging.WARNING, logger="webapp.broker"), _connection(tmp_path) as conn:
        payload = _publish_and_take_one(conn)

    assert payload == {"i": 7}
    assert sorted(p.name for p in queue.iterdir()) == sorted([new_tmp.name, evidence.name])
    assert f"removed 1 broker temporary file(s) older than 600 s from {queue}" in caplog.text
    assert old_tmp.name in caplog.text and new_tmp.name not in caplog.text
    assert f"1 unreadable broker message(s) kept in {queue}" in caplog.text


def test_the_safe_age_is_a_transport_option(tmp_path):
    queue = _folders(tmp_path)
    _writer_killed_mid_write(queue / f"1_x.{QUEUE}.msg")
    [leftover] = queue.glob(".*.tmp")
    two_minutes_ago = time.time() - 120
    os.utime(leftover, (two_minutes_ago, two_minutes_ago))

    with _connection(tmp_path) as conn:
        assert conn.default_channel.temporary_files_sweep() == []  # 2 minutes: younger than the default 10
    with _connection(tmp_path, stale_temporary_age=60) as conn:
        assert conn.default_channel.temporary_files_sweep() == [leftover.name]
    assert list(queue.iterdir()) == []


def test_a_folder_named_like_a_stale_temporary_file_is_logged_once_and_polls_go_on(tmp_path, caplog):
    # os.remove on it is IsADirectoryError (a sticky folder gives PermissionError): it escaped the
    # sweep, so the worker's poll raised about once a minute instead of reading the queue.
    queue = _folders(tmp_path)
    folder = queue / f".1_x.{QUEUE}.msg.abc.tmp"
    folder.mkdir()
    eleven_minutes_ago = time.time() - 660
    os.utime(folder, (eleven_minutes_ago, eleven_minutes_ago))

    with caplog.at_level(logging.WARNING, logger="webapp.broker"), _connection(tmp_path) as conn:
        payload = _publish_and_take_one(conn)
        assert conn.default_channel.temporary_files_sweep() == []  # the next sweeps too, without a second warning

    assert payload == {"i": 7}
    assert folder.is_dir()
    assert caplog.text.count(f"cannot remove stale broker temporary file {folder.name} from {queue}") == 1


def _claim_then_hang(folder: str, claimed) -> None:
    """In a forked child: claim the queue's message as a worker's poll does, then hang before reading it."""
    import webapp.broker

    def hang(payload):
        claimed.set()
        time.sleep(600)

    webapp.broker.loads = hang  # only in this child: the claim is made, the file is never read nor removed
    with _connection(Path(folder)) as conn:
        conn.default_channel._get(QUEUE)


def test_a_message_whose_reader_was_killed_after_claiming_it_is_read_by_the_next_worker(tmp_path, caplog):
    queue = _folders(tmp_path)
    with _connection(tmp_path) as conn:
        conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
    ctx = multiprocessing.get_context("fork")
    claimed = ctx.Event()
    reader = ctx.Process(target=_claim_then_hang, args=(str(tmp_path), claimed))
    reader.start()
    try:
        assert claimed.wait(30)
        [claim] = os.listdir(queue)
    finally:
        reader.kill()  # SIGKILL between the claim and the read
        reader.join(10)
    assert reader.exitcode == -signal.SIGKILL

    with caplog.at_level(logging.WARNING, logger="webapp.broker"), _connection(tmp_path) as conn:
        simple = conn.SimpleQueue(QUEUE)
        message = simple.get(timeout=2)  # the first poll sweeps
        message.ack()
        simple.close()

    assert message.payload == {"i": 7}
    assert os.listdir(queue) == []
    assert claim.startswith(".") and claim.endswith(f".{QUEUE}.msg.{reader.pid}@{socket.gethostname()}.claimed")
    gave_back = f"gave back 1 broker message(s) whose reader stopped between claiming and reading them, in {queue}"
    assert f"{gave_back}: {claim}" in caplog.text


def _sleeping_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_a_live_readers_claim_and_another_machines_young_claim_are_kept_and_old_ones_given_back(tmp_path):
    queue = _folders(tmp_path)
    alive = _sleeping_process()
    try:
        with _connection(tmp_path) as conn:
            for i in range(4):
                conn.Producer(serializer="json").publish({"i": i}, routing_key=QUEUE)
        names = sorted(os.listdir(queue))
        claims = [
            f".{names[0]}.{alive.pid}@{socket.gethostname()}.claimed",  # this machine, its reader still running
            f".{names[1]}.{alive.pid}@another-machine.example.claimed",  # its pid means nothing here
            f".{names[2]}.claimed",  # an earlier version's claim: no owner
            f".{names[3]}.{alive.pid}@another-machine.example.claimed",
        ]
        for name, claim in zip(names, claims):
            os.rename(queue / name, queue / claim)
        two_hours_ago = time.time() - 7200
        for claim in claims[2:]:
            os.utime(queue / claim, (two_hours_ago, two_hours_ago))
        with _connection(tmp_path) as conn:
            given_back = conn.default_channel.stale_claims_give_back()
        assert sorted(given_back) == sorted(claims[2:])
        assert sorted(os.listdir(queue)) == sorted([*claims[:2], *names[2:]])
    finally:
        alive.kill()
        alive.wait()
    with _connection(tmp_path) as conn:
        assert conn.default_channel.stale_claims_give_back() == [claims[0]]  # its reader is gone now: at once
    with _connection(tmp_path, stale_claim_age=0) as conn:  # the age is a transport option
        assert conn.default_channel.stale_claims_give_back() == [claims[1]]
    assert sorted(os.listdir(queue)) == names
