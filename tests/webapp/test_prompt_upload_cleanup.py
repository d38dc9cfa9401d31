"""Uploaded prompt files do not pile up on the server: a preview with bad lines keeps nothing, and a
preview nobody imported is removed a day later, when the next file is uploaded."""

import os
import time

from django.core.files.uploadedfile import SimpleUploadedFile


def test_a_preview_with_bad_lines_leaves_no_file_behind(staff_client, project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    answer = staff_client.post(f"/staff/p/{project.slug}/setup/prompts/preview/",
                               {"file": SimpleUploadedFile("p.jsonl", b'{"text": "fine"}\nnot json\n')})
    assert answer.status_code == 400 and "Not imported: 1 bad line" in answer.content.decode()
    assert list((tmp_path / "uploads").iterdir()) == []


def test_an_upload_never_imported_is_removed_a_day_later_and_a_fresh_one_is_kept(staff_client, project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    url = f"/staff/p/{project.slug}/setup/prompts/preview/"
    first = staff_client.post(url, {"file": SimpleUploadedFile("a.jsonl", b'{"text": "one"}\n')}).content.decode()
    old = first.split('name="upload" value="')[1].split('"')[0]
    stale = time.time() - 2 * 24 * 3600  # two days old
    os.utime(tmp_path / "uploads" / old, (stale, stale))
    second = staff_client.post(url, {"file": SimpleUploadedFile("b.jsonl", b'{"text": "two"}\n')}).content.decode()
    fresh = second.split('name="upload" value="')[1].split('"')[0]
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [fresh]
    other = tmp_path / "uploads" / "notes.txt"  # only names the app gives are ever removed
    other.write_text("x")
    os.utime(other, (stale, stale))
    staff_client.post(url, {"file": SimpleUploadedFile("c.jsonl", b'{"text": "three"}\n')})
    assert other.exists() and (tmp_path / "uploads" / fresh).exists()
