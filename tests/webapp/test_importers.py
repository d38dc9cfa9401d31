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


def test_demo_prompts_come_from_the_vader_movie_review_snippets(tmp_path):
    import io
    import tarfile

    from webapp.annotation.importers import demo_prompts_from_vader_sdist

    data = "\n".join(f"{i}\t1.5\t" + " ".join(f"word{j}" for j in range(20)) for i in range(1, 101))
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        blob = data.encode()
        info = tarfile.TarInfo("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, mode="w:gz") as tar:
        blob = inner.getvalue()
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    rows = demo_prompts_from_vader_sdist(sdist, count=50, held_out=5)
    assert len(rows) == 50 and sum(r.held_out for r in rows) == 5
    assert all(r.text.startswith("Continue this movie review") and "word9" in r.text and "word10" not in r.text for r in rows)
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
