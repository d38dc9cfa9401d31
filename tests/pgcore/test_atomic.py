"""One atomic-write helper: a reader sees the old file or the whole new one; a failed write leaves nothing."""

import os
import subprocess
import sys
import threading

import pytest

from pgcore.atomic import atomic_directory, atomic_file, atomic_write


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, "kept")
    with pytest.raises(RuntimeError), atomic_file(target, "w") as f:
        f.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_two_concurrent_writers_of_one_name_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "export.jsonl"
    payloads = [(str(i) * 200_000).encode() for i in range(8)]
    errors = []

    def write(data):
        try:
            atomic_write(target, data)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads  # one writer's whole content, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["export.jsonl"]


def test_a_killed_writer_leaves_the_old_file_readable(tmp_path):
    target = tmp_path / "plot.png"
    atomic_write(target, b"old")
    code = (
        "import os, sys\n"
        "from pgcore.atomic import atomic_file\n"
        f"with atomic_file({str(target)!r}) as f:\n"
        "    f.write(b'partial'); f.flush(); os._exit(9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), check=False)
    assert proc.returncode == 9
    assert target.read_bytes() == b"old"


def test_atomic_directory_swaps_a_folder_in_whole(tmp_path):
    out = tmp_path / "version"
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_directory(out) as tmp:
        (tmp / "a").write_text("2")
        raise ValueError("failed save")
    assert (out / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["version"]


def test_importing_the_helper_does_not_import_torch():
    code = "import sys, pgcore.atomic; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_files_and_folders_get_the_umasks_permissions_like_new_ones(tmp_path):
    # tempfile's 0600 and 0700 kept a process running as another user of the folder's group out.
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "out.json", "{}")
        with atomic_directory(tmp_path / "version") as tmp:
            atomic_write(tmp / "weights", b"w")
        (tmp_path / "plain").write_text("x")
        (tmp_path / "plain-folder").mkdir()
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o7777) for p in [*tmp_path.iterdir(), tmp_path / "version" / "weights"]}
    files, folders = "0o640", "0o750"  # 0o666 and 0o777 less the umask
    assert modes == {"out.json": files, "weights": files, "plain": files, "version": folders, "plain-folder": folders}
