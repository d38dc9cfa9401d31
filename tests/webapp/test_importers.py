import json

import pytest
from django.core.management import CommandError, call_command

from webapp.annotation.importers import PromptFileError, parse_prompt_file
from webapp.annotation.models import PROMPT_MAX_CHARS, Prompt


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_jsonl_file_is_parsed_with_sources_and_held_out_flags(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"text": "one"}\n\n{"prompt": "two", "source": "s", "held_out": true}\n')
    rows = parse_prompt_file(path)
    assert [(r.line, r.text, r.source, r.held_out) for r in rows] == [(1, "one", "", False), (3, "two", "s", True)]


def test_bad_json_on_line_7_is_reported_with_its_line_number(tmp_path):
    lines = [json.dumps({"text": f"p{i}"}) for i in range(6)] + ['{"text": "broken"'] + ['{"text": "p8"}']
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, "p.jsonl", "\n".join(lines)))
    assert excinfo.value.errors[0][0] == 7
    assert "line 7: bad JSON" in str(excinfo.value)


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_bad_json_names_the_column_on_its_own_line_or_the_end_of_the_line(tmp_path, ending):
    lines = ['{"text": "unclosed"', '{"text": "fine"}', '{"text" "no colon"}', '{"text": "last, unclosed"']
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, "p.jsonl", ending.join(lines) + ending))
    assert excinfo.value.errors == [
        (1, "bad JSON (Expecting ',' delimiter at the end of the line)"),
        (3, "bad JSON (Expecting ':' delimiter at column 9)"),
        (4, "bad JSON (Expecting ',' delimiter at the end of the line)"),
    ]


def test_every_bad_line_is_named_with_its_reason(tmp_path):
    content = "\n".join(
        [
            json.dumps({"text": "fine"}),
            json.dumps({"txt": "no text key"}),
            json.dumps({"text": "   "}),
            json.dumps({"text": "x" * (PROMPT_MAX_CHARS + 1)}),
            json.dumps(["not", "an", "object"]),
            json.dumps({"text": 5}),
        ]
    )
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, "p.jsonl", content))
    reasons = dict(excinfo.value.errors)
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "missing field 'text'" in reasons[2]
    assert reasons[3] == "empty text"
    assert f"the limit is {PROMPT_MAX_CHARS}" in reasons[4]
    assert "expected a JSON object" in reasons[5]


def test_csv_without_a_text_column_is_rejected(tmp_path):
    with pytest.raises(PromptFileError, match="missing column 'text'"):
        parse_prompt_file(write(tmp_path, "p.csv", "title,source\nhello,x\n"))


def test_csv_rows_keep_their_line_numbers_and_quoted_newlines(tmp_path):
    path = write(tmp_path, "p.csv", 'text,held_out\n"first\nline",no\nsecond,yes\n')
    rows = parse_prompt_file(path)
    assert [(r.text, r.held_out) for r in rows] == [("first\nline", False), ("second", True)]
    with pytest.raises(PromptFileError, match="line 3: empty text"):
        parse_prompt_file(write(tmp_path, "q.csv", "text\nok\n\"  \"\n"))


def test_a_bad_csv_row_spanning_lines_is_reported_by_the_line_it_starts_on(tmp_path):
    """Rows 2 and 5 are fine; the bad rows start on lines 3 (runs to 4), 6 (to 8) and 10 (never closed)."""
    content = 'text,held_out\nok,no\n"two\nlines",maybe\nfine,yes\n"   \n\n  ",no\n\n"never\nclosed,no\n'
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, "p.csv", content))
    errors = excinfo.value.errors
    assert [line for line, _ in errors] == [3, 6, 10]
    assert "held_out must be true or false" in errors[0][1] and errors[1][1] == "empty text"
    assert errors[2][1].startswith("bad CSV")


def test_non_utf8_file_is_rejected_with_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(PromptFileError, match="line 2: not valid UTF-8"):
        parse_prompt_file(path)


def test_import_command_imports_everything_or_nothing(project, tmp_path):
    before = Prompt.objects.filter(project=project).count()
    bad = write(tmp_path, "bad.jsonl", '{"text": "new one"}\n{"text": ""}\n')
    with pytest.raises(CommandError, match="line 2: empty text"):
        call_command("import_prompts", "t", str(bad))
    assert Prompt.objects.filter(project=project).count() == before

    good = write(tmp_path, "good.jsonl", '{"text": "new one"}\n{"text": "new two"}\n{"text": "new one"}\n')
    call_command("import_prompts", "t", str(good))
    assert Prompt.objects.filter(project=project).count() == before + 2


def test_import_command_names_an_unknown_project(db, tmp_path):
    with pytest.raises(CommandError, match="No project named 'nope'"):
        call_command("import_prompts", "nope", str(write(tmp_path, "p.jsonl", '{"text": "x"}')))


def test_demo_prompts_come_from_the_vader_movie_review_snippets(fake_vader_sdist):
    from webapp.annotation.importers import demo_prompts_from_vader_sdist

    rows = demo_prompts_from_vader_sdist(fake_vader_sdist, count=50, held_out=5)
    assert len(rows) == 50 and sum(r.held_out for r in rows) == 5
    for r in rows:  # cut after half of the snippet's 20 words
        i = r.source.rsplit(":", 1)[1]
        assert r.text.startswith("Continue this movie review") and f"s{i}w9" in r.text and f"s{i}w10" not in r.text
    assert all(r.source.startswith("vader:movieReviewSnippets:") for r in rows)


def test_create_project_command_registers_a_local_model_folder_as_version_0(db, tiny_model_dir, tmp_path):
    from webapp.policies.models import Project

    call_command("create_project", "mine", str(tiny_model_dir), "--title", "Mine")
    project = Project.objects.get(slug="mine")
    assert project.served_version.number == 0 and project.served_version.weights_path == str(tiny_model_dir)
    with pytest.raises(CommandError, match="not a Hugging Face model folder"):
        call_command("create_project", "other", str(tmp_path))


def test_an_unterminated_csv_quote_rejects_the_file(tmp_path):
    with pytest.raises(PromptFileError, match="bad CSV"):
        parse_prompt_file(write(tmp_path, "p.csv", 'text\n"unterminated\n'))


def test_a_nul_character_rejects_the_file_with_its_line(tmp_path):
    with pytest.raises(PromptFileError, match="line 2: text contains a NUL character"):
        parse_prompt_file(write(tmp_path, "p.jsonl", '{"text": "ok"}\n{"text": "nul\\u0000inside"}\n'))


# --- Streaming, caps, line endings, NUL (issue 14: input) ------------------------------------------

LINE_BREAKS_THAT_ARE_TEXT = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"]


def test_unicode_line_separators_inside_a_json_string_are_text_not_line_breaks(tmp_path):
    texts = [f"before{ch}after" for ch in LINE_BREAKS_THAT_ARE_TEXT]
    # ensure_ascii=False writes them raw, as a UTF-8 file from another tool would
    content = "\n".join(json.dumps({"text": t, "source": f"s{ch}s"}, ensure_ascii=False) for t, ch in zip(texts, LINE_BREAKS_THAT_ARE_TEXT))
    rows = parse_prompt_file(write(tmp_path, "p.jsonl", content + "\n"))
    assert [r.text for r in rows] == texts
    assert [r.line for r in rows] == list(range(1, len(texts) + 1))


def test_csv_fields_keep_unicode_line_separators_and_form_feeds(tmp_path):
    texts = [f"before{ch}after" for ch in LINE_BREAKS_THAT_ARE_TEXT]
    content = "text,source\n" + "".join(f'"{t}",unquoted{t}\n' for t in texts)
    rows = parse_prompt_file(write(tmp_path, "p.csv", content))
    assert [(r.text, r.source, r.line) for r in rows] == [(t, f"unquoted{t}", i + 2) for i, t in enumerate(texts)]


def test_crlf_line_endings_are_line_breaks_in_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(b'{"text": "one"}\r\n\r\n{"text": "two"}\r\n')
    assert [(r.line, r.text) for r in parse_prompt_file(jsonl)] == [(1, "one"), (3, "two")]
    csv_file = tmp_path / "p.csv"
    csv_file.write_bytes(b'text,held_out\r\n"multi\r\nline",yes\r\nsecond,no\r\n')
    assert [(r.line, r.text, r.held_out) for r in parse_prompt_file(csv_file)] == [(2, "multi\r\nline", True), (4, "second", False)]


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufefftext\nhello\n".encode())
    assert [r.text for r in parse_prompt_file(path)] == ["hello"]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("p.jsonl", '{"text": "ok"}\n{"text": "fine", "source": "a\\u0000b"}\n', "line 2: source contains a NUL character"),
        ("p.jsonl", '{"text": "ok"}\n{"text": "fine", "held_out": "no\\u0000"}\n', "line 2: held_out contains a NUL character"),
        ("p.jsonl", '{"text": "ok"}\n{"text": "fine", "extra\\u0000": 1}\n', "line 2: extra contains a NUL character"),
        ("p.csv", "text,source\nok,x\nfine,a\x00b\n", "line 3: source contains a NUL character"),
        ("p.csv", "text,held_out\nok,no\nfi\x00ne,no\n", "line 3: text contains a NUL character"),
        ("p.csv", "text,sou\x00rce\nok,x\n", "line 1: a column name contains a NUL character"),
    ],
)
def test_a_nul_character_in_any_field_rejects_the_file_with_its_line(tmp_path, name, content, reason):
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, name, content))
    assert reason in str(excinfo.value)


def test_a_file_over_the_size_cap_is_rejected_naming_the_setting(tmp_path, settings):
    settings.REWARDLOOP_IMPORT_MAX_BYTES = 100
    path = write(tmp_path, "p.jsonl", "".join(json.dumps({"text": f"prompt {i}"}) + "\n" for i in range(10)))
    with pytest.raises(PromptFileError, match=r"the limit is 100 \(REWARDLOOP_IMPORT_MAX_BYTES\)"):
        parse_prompt_file(path)


def test_a_file_with_more_lines_than_the_cap_is_rejected_naming_the_setting(tmp_path, settings):
    settings.REWARDLOOP_IMPORT_MAX_LINES = 5
    ok = write(tmp_path, "ok.jsonl", "".join(json.dumps({"text": f"prompt {i}"}) + "\n" for i in range(5)))
    assert len(parse_prompt_file(ok)) == 5
    path = write(tmp_path, "p.csv", "text\n" + "".join(f"prompt {i}\n" for i in range(5)))
    with pytest.raises(PromptFileError, match=r"line 6: the file has more than 5 lines \(REWARDLOOP_IMPORT_MAX_LINES\)"):
        parse_prompt_file(path)


def test_a_line_over_the_length_cap_is_named_and_the_lines_after_it_are_still_checked(tmp_path, settings):
    settings.REWARDLOOP_IMPORT_MAX_LINE_BYTES = 64
    long_line = json.dumps({"text": "x" * 200})
    exact = json.dumps({"text": "y" * (64 - len('{"text": ""}'))})
    assert len(exact) == 64
    path = write(tmp_path, "p.jsonl", "\n".join([exact, long_line, '{"text": "ok"}', "{broken"]) + "\r\n")
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(path)
    assert [line for line, _ in excinfo.value.errors] == [2, 4]
    assert "longer than 64 bytes (REWARDLOOP_IMPORT_MAX_LINE_BYTES)" in excinfo.value.errors[0][1]


def test_invalid_utf8_on_several_lines_names_each_of_them(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(path)
    assert excinfo.value.errors == [(1, "not valid UTF-8"), (3, "not valid UTF-8")]


def test_thousands_of_bad_lines_are_counted_but_only_the_first_twenty_kept(tmp_path):
    from webapp.annotation.importers import MAX_REPORTED_ERRORS

    path = write(tmp_path, "p.jsonl", '{"text": ""}\n' * 5000)
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(path)
    assert len(excinfo.value.errors) == MAX_REPORTED_ERRORS and excinfo.value.total == 5000
    assert f"(and {5000 - MAX_REPORTED_ERRORS} more)" in str(excinfo.value)


def test_a_bad_last_line_after_several_batches_stores_nothing(project, tmp_path):
    from webapp.annotation.services import IMPORT_BATCH, prompts_import

    before = Prompt.objects.filter(project=project).count()
    rows = [json.dumps({"text": f"streamed prompt {i}"}) for i in range(2 * IMPORT_BATCH + 10)]
    path = write(tmp_path, "p.jsonl", "\n".join([*rows, '{"text": 7}']) + "\n")
    with pytest.raises(PromptFileError, match=f"line {len(rows) + 1}: 'text' must be a string"):
        prompts_import(project=project, path=path)
    assert Prompt.objects.filter(project=project).count() == before


def test_a_file_that_turns_bad_between_the_check_and_the_store_stores_nothing(project, tmp_path, monkeypatch):
    from webapp.annotation import services

    before = Prompt.objects.filter(project=project).count()
    path = write(tmp_path, "p.jsonl", "".join(json.dumps({"text": f"new {i}"}) + "\n" for i in range(2500)))
    real_check = services.prompt_file_check

    def check_then_spoil(p, **kw):
        n = real_check(p, **kw)
        with open(p, "a", encoding="utf-8") as f:
            f.write("{broken\n")
        return n

    monkeypatch.setattr(services, "prompt_file_check", check_then_spoil)
    with pytest.raises(PromptFileError, match="line 2501: bad JSON"):
        services.prompts_import(project=project, path=path)
    assert Prompt.objects.filter(project=project).count() == before


def test_import_counts_repeats_within_the_file_and_against_stored_prompts_across_batches(project, tmp_path):
    from webapp.annotation.services import IMPORT_BATCH, prompts_import

    stored = Prompt.objects.filter(project=project, held_out=False).first().text
    texts = [f"batch prompt {i % (IMPORT_BATCH + 5)}" for i in range(2 * IMPORT_BATCH)] + [stored]
    path = write(tmp_path, "p.csv", "text\n" + "".join(f"{t}\n" for t in texts))
    before = Prompt.objects.filter(project=project).count()
    result = prompts_import(project=project, path=path)
    assert result.created == IMPORT_BATCH + 5
    assert result.duplicates == len(texts) - (IMPORT_BATCH + 5)
    assert Prompt.objects.filter(project=project).count() == before + IMPORT_BATCH + 5


def _big_jsonl(path, megabytes: int):
    line = json.dumps({"text": "a long enough prompt " * 8 + "{}", "source": "bench"}) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        i = 0
        while f.tell() < megabytes * 1_000_000:
            f.write(line.replace("{}", str(i)))
            i += 1
    return path, i


def test_checking_a_large_file_keeps_memory_far_below_its_size(tmp_path):
    import tracemalloc

    from webapp.annotation.importers import prompt_file_check

    path, n = _big_jsonl(tmp_path / "big.jsonl", 8)
    tracemalloc.start()
    try:
        assert prompt_file_check(path) == n
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak {peak} bytes for an 8 MB file"


def test_importing_a_large_file_keeps_memory_far_below_its_size(project, tmp_path, monkeypatch):
    import tracemalloc

    from webapp.annotation import services
    from webapp.annotation.services import prompts_import

    monkeypatch.setattr(services, "IMPORT_BATCH", 100)  # memory grows with the batch, never with the file
    path, n = _big_jsonl(tmp_path / "big.jsonl", 2)
    tracemalloc.start()
    try:
        result = prompts_import(project=project, path=path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.created == n
    assert peak < 1_000_000, f"peak {peak} bytes for a 2 MB file"


def test_a_csv_with_a_prompt_column_and_no_text_column_takes_prompt_and_says_so(tmp_path):
    rows = parse_prompt_file(write(tmp_path, "p.csv", "id,prompt,completion\n1,Say hi,Hi!\n"))
    assert [(r.text, r.text_field, r.unread_fields) for r in rows] == [("Say hi", "prompt", ("completion", "id"))]


def test_a_csv_header_with_both_text_and_prompt_is_rejected_whole_at_the_header(tmp_path):
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, "p.csv", "prompt,text\nthe instruction,the reply\nsecond,row\n"))
    assert excinfo.value.total == 1
    line, reason = excinfo.value.errors[0]
    assert line == 1 and "both a 'text' and a 'prompt' column" in reason and "ambiguous" in reason


@pytest.mark.parametrize(
    "header, reason",
    [("text,source,text", "line 1: the header names column(s) 'text' twice"), ("Text", "names are case-sensitive, found 'Text'")],
)
def test_a_csv_header_naming_a_column_twice_or_a_capitalised_text_is_rejected_with_the_reason(tmp_path, header, reason):
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, "p.csv", f"{header}\na,b,c\n"))
    assert reason in str(excinfo.value)


def test_a_jsonl_object_with_both_text_and_prompt_is_a_bad_line(tmp_path):
    content = '{"text": "one"}\n{"prompt": "q", "text": "a"}\n'
    with pytest.raises(PromptFileError) as excinfo:
        parse_prompt_file(write(tmp_path, "p.jsonl", content))
    assert [line for line, _ in excinfo.value.errors] == [2] and "ambiguous" in excinfo.value.errors[0][1]


def test_the_import_preview_says_which_column_gave_the_text_and_which_it_left_unread(tmp_path):
    from webapp.annotation.services import prompt_file_preview

    preview = prompt_file_preview(path=write(tmp_path, "p.csv", "prompt,notes\nfirst,x\nsecond,y\n"))
    assert (preview["text_fields"], preview["unread_fields"]) == ({"prompt": 2}, ["notes"])
    mixed = prompt_file_preview(path=write(tmp_path, "p.jsonl", '{"text": "a"}\n{"prompt": "b"}\n'))
    assert mixed["text_fields"] == {"text": 1, "prompt": 1}


def test_a_csv_column_whose_cells_the_rows_leave_off_is_still_named_unread(tmp_path):
    """Rows may end before the header's last columns (spreadsheets drop empty trailing cells)."""
    from webapp.annotation.services import prompt_file_preview

    preview = prompt_file_preview(path=write(tmp_path, "p.csv", "text,notes\nfirst\nsecond\n"))
    assert (preview["text_fields"], preview["unread_fields"]) == ({"text": 2}, ["notes"])


def test_the_import_command_says_which_column_the_prompts_were_read_from(project, tmp_path):
    from io import StringIO

    out = StringIO()
    call_command("import_prompts", "t", str(write(tmp_path, "p.csv", "id,prompt\n1,Say hi\n")), stdout=out)
    assert "Prompt text read from 'prompt'; not read: 'id'." in out.getvalue()
