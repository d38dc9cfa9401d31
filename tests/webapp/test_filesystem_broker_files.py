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
from queue import Empty

import pytest
from kombu import Connection

from webapp.broker import _pid_namespace

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


def _leftover_temporary_file(queue: Path, *, seconds_ago: float) -> Path:
    """A killed writer's hidden temporary file in ``queue``, last written ``seconds_ago``."""
    _writer_killed_mid_write(queue / f"1_x.{QUEUE}.msg")
    [leftover] = queue.glob(".*.tmp")
    then = time.time() - seconds_ago
    os.utime(leftover, (then, then))
    return leftover


def _publish_and_take_one(conn: Connection) -> dict:
    """Publish ``{"i": 7}`` on the queue and take it back as a worker does (its first poll sweeps); the payload."""
    conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
    return _take_one(conn)


def _take_one(conn: Connection) -> dict:
    """Take one message off the queue as a worker does and acknowledge it; its payload."""
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
    leftover = _leftover_temporary_file(queue, seconds_ago=120)

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

    with _connection(tmp_path) as conn:  # under a minute after its claim: kept, whatever its reader
        assert conn.default_channel.stale_claims_give_back() == []
    with caplog.at_level(logging.WARNING, logger="webapp.broker"), _connection(tmp_path, min_claim_age=0) as conn:
        simple = conn.SimpleQueue(QUEUE)
        message = simple.get(timeout=2)  # the first poll sweeps
        message.ack()
        simple.close()

    assert message.payload == {"i": 7}
    assert os.listdir(queue) == []
    assert claim.startswith(".") and claim.endswith(
        f".{QUEUE}.msg.{reader.pid}@{socket.gethostname()}+{_pid_namespace()}.claimed")
    gave_back = f"gave back 1 broker message(s) whose reader stopped between claiming and reading them, in {queue}"
    assert f"{gave_back}: {claim}" in caplog.text


def _sleeping_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_given_back_once_a_minute_old_and_its_reader_gone_or_an_hour_old_if_unseen_from_here(tmp_path):
    queue = _folders(tmp_path)
    alive, dead, host, ours = _sleeping_process(), _dead_pid(), socket.gethostname(), _pid_namespace()
    try:
        with _connection(tmp_path) as conn:
            for i in range(6):
                conn.Producer(serializer="json").publish({"i": i}, routing_key=QUEUE)
        names = sorted(os.listdir(queue))
        claims = [
            f".{names[0]}.{alive.pid}@{host}+{ours}.claimed",  # this machine and namespace, its reader running
            f".{names[1]}.{dead}@{host}+{ours}.claimed",  # its reader gone
            f".{names[2]}.{dead}@{host}+{'0' * 12}.claimed",  # another container named as ours: its pid is not ours
            f".{names[3]}.{dead}@{host}.claimed",  # an earlier version's claim: namespace unknown
            f".{names[4]}.{dead}@another-machine.example+{ours}.claimed",
            f".{names[5]}.claimed",  # kombu's claim: no owner
        ]
        for name, claim in zip(names, claims):
            os.rename(queue / name, queue / claim)
        two_hours_ago = time.time() - 7200  # the age counts from the claim's rename, not the message's writing
        for claim in claims:
            os.utime(queue / claim, (two_hours_ago, two_hours_ago))

        with _connection(tmp_path) as conn:  # all under a minute old
            assert conn.default_channel.stale_claims_give_back() == []
        with _connection(tmp_path, min_claim_age=0) as conn:  # the minimum age is a transport option
            assert conn.default_channel.stale_claims_give_back() == [claims[1]]
        assert sorted(os.listdir(queue)) == sorted([claims[0], names[1], *claims[2:]])
    finally:
        alive.kill()
        alive.wait()
    with _connection(tmp_path, min_claim_age=0) as conn:
        assert conn.default_channel.stale_claims_give_back() == [claims[0]]  # its reader is gone now
    with _connection(tmp_path, min_claim_age=0, stale_claim_age=0) as conn:  # the maximum age is one too
        assert sorted(conn.default_channel.stale_claims_give_back()) == sorted(claims[2:])
    assert sorted(os.listdir(queue)) == names


def test_a_claim_naming_an_impossible_process_of_ours_is_given_back_without_error(tmp_path):
    queue = _folders(tmp_path)
    with _connection(tmp_path) as conn:
        for i in range(3):
            conn.Producer(serializer="json").publish({"i": i}, routing_key=QUEUE)
    names = sorted(os.listdir(queue))
    host, ours = socket.gethostname(), _pid_namespace()
    claims = [f".{name}.{pid}@{host}+{ours}.claimed" for name, pid in zip(names, ["0", "9" * 19, "9" * 30])]
    for name, claim in zip(names, claims):
        os.rename(queue / name, queue / claim)

    with _connection(tmp_path, min_claim_age=0) as conn:  # 0: our process group; the others: OverflowError
        assert sorted(conn.default_channel.stale_claims_give_back()) == sorted(claims)
    assert sorted(os.listdir(queue)) == names


def _sweep_right_after_claims(monkeypatch, sweeper) -> list:
    """Make every claim of this process run ``sweeper``'s give-back right after its rename (another
    worker's sweep at the worst moment); the lists it gave back, in order."""
    rename, swept = os.rename, []

    def rename_then_sweep(src, dst, *args, **kwargs):
        rename(src, dst, *args, **kwargs)
        if str(dst).endswith(".claimed"):
            swept.append(sweeper.default_channel.stale_claims_give_back())

    monkeypatch.setattr(os, "rename", rename_then_sweep)
    return swept


def test_a_message_older_than_the_stale_age_is_not_taken_from_its_live_reader_right_after_its_claim(
        tmp_path, monkeypatch):
    # Its claim carried the writer's time until the reader's os.utime: another worker's sweep in between
    # gave it back, and the reader's read raised (ChannelError) into the consumer.
    queue = _folders(tmp_path)
    with _connection(tmp_path) as conn:
        conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
    [name] = os.listdir(queue)
    two_hours_ago = time.time() - 7200
    os.utime(queue / name, (two_hours_ago, two_hours_ago))  # a message left waiting through a long outage

    with _connection(tmp_path) as sweeper, _connection(tmp_path) as reader:
        swept = _sweep_right_after_claims(monkeypatch, sweeper)
        payload = _take_one(reader)

    assert swept == [[]]
    assert payload == {"i": 7}
    assert os.listdir(queue) == []


def test_a_reader_whose_claim_was_given_back_reads_nothing_and_the_message_stays_on_the_queue(
        tmp_path, monkeypatch, caplog):
    queue = _folders(tmp_path)
    with _connection(tmp_path) as conn:
        conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
    [name] = os.listdir(queue)

    with _connection(tmp_path, min_claim_age=0, stale_claim_age=0) as sweeper, _connection(tmp_path) as reader:
        swept = _sweep_right_after_claims(monkeypatch, sweeper)  # a sweeper that gives back every claim
        with caplog.at_level(logging.WARNING, logger="webapp.broker"), pytest.raises(Empty):
            reader.default_channel._get(QUEUE)
        assert len(swept) == 1 and len(swept[0]) == 1
        assert os.listdir(queue) == [name]
        monkeypatch.undo()
        assert _take_one(reader) == {"i": 7}  # the next poll reads it
    assert os.listdir(queue) == []
    assert f"broker claim {swept[0][0]} in {queue} was given back while its reader held it" in caplog.text


def test_one_poll_lists_the_inbox_once_to_remove_stale_temporary_files_and_give_back_abandoned_claims(
        tmp_path, monkeypatch):
    queue = _folders(tmp_path)
    _leftover_temporary_file(queue, seconds_ago=660)
    with _connection(tmp_path) as conn:
        conn.Producer(serializer="json").publish({"i": 7}, routing_key=QUEUE)
    [name] = [p.name for p in queue.iterdir() if p.name.endswith(".msg")]
    os.rename(queue / name, queue / f".{name}.{_dead_pid()}@{socket.gethostname()}+{_pid_namespace()}.claimed")
    scandir, listed = os.scandir, []

    def scandir_counted(path="."):
        listed.append(os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_counted)
    with _connection(tmp_path, min_claim_age=0) as conn:
        assert _take_one(conn) == {"i": 7}  # given back by the first poll's sweep, then read

    assert listed == [str(queue)]
    assert os.listdir(queue) == []
