"""Reading prompt files (JSONL or CSV) and the demo prompt set.

A file is validated whole before anything is written: one bad line rejects
the file, and the error names every bad line (up to a limit) and why.

JSONL: one JSON object per line, ``{"text": "...", "source": "...", "held_out": false}``
(``prompt`` is accepted for ``text``; blank lines are ignored).
CSV: a header row with a ``text`` (or ``prompt``) column, optional ``source``
and ``held_out`` columns.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from webapp.errors import ApplicationError

from .models import PROMPT_MAX_CHARS

MAX_REPORTED_ERRORS = 20
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"0", "false", "no", "n", ""}


@dataclass(frozen=True)
class PromptRow:
    line: int
    text: str
    source: str = ""
    held_out: bool = False


class PromptFileError(ApplicationError):
    """The file was rejected; ``errors`` lists ``(line, reason)``."""

    def __init__(self, name: str, errors: list[tuple[int, str]]):
        shown = "; ".join(f"line {line}: {reason}" for line, reason in errors[:MAX_REPORTED_ERRORS])
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        super().__init__(f"{name} was not imported: {shown}{more}")
        self.errors = errors


def _row(line: int, record: dict, errors: list) -> PromptRow | None:
    text = record.get("text", record.get("prompt"))
    if text is None:
        errors.append((line, "missing field 'text'"))
        return None
    if not isinstance(text, str):
        errors.append((line, f"'text' must be a string, not {type(text).__name__}"))
        return None
    text = text.strip()
    if not text:
        errors.append((line, "empty text"))
        return None
    if "\x00" in text:
        errors.append((line, "text contains a NUL character"))
        return None
    if len(text) > PROMPT_MAX_CHARS:
        errors.append((line, f"text is {len(text)} characters long; the limit is {PROMPT_MAX_CHARS}"))
        return None
    held_out = record.get("held_out", False)
    if isinstance(held_out, str):
        if held_out.strip().lower() not in _TRUE | _FALSE:
            errors.append((line, f"held_out must be true or false, not {held_out!r}"))
            return None
        held_out = held_out.strip().lower() in _TRUE
    elif not isinstance(held_out, bool):
        errors.append((line, "held_out must be true or false"))
        return None
    source = record.get("source") or ""
    return PromptRow(line=line, text=text, source=str(source)[:200], held_out=held_out)


def parse_prompt_file(path: str | Path) -> list[PromptRow]:
    """Parse and validate a JSONL or CSV prompt file (by extension; ``.json`` means JSONL).

    Raises:
        PromptFileError: with every bad line and its reason; nothing is returned.
        ApplicationError: unreadable file or unknown extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".jsonl", ".json", ".ndjson", ".csv"}:
        raise ApplicationError(f"{path.name}: unknown format {suffix!r}; use .jsonl or .csv")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ApplicationError(f"{path}: cannot read ({exc.strerror})") from exc
    errors: list[tuple[int, str]] = []
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PromptFileError(path.name, [(line, "not valid UTF-8")]) from exc
    rows = _parse_csv(content, errors) if suffix == ".csv" else _parse_jsonl(content, errors)
    if not errors and not rows:
        errors.append((1, "the file holds no prompts"))
    if errors:
        raise PromptFileError(path.name, errors)
    return rows


def _parse_jsonl(content: str, errors: list) -> list[PromptRow]:
    rows = []
    for line_no, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append((line_no, f"bad JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(record, dict):
            errors.append((line_no, f"expected a JSON object, got {type(record).__name__}"))
            continue
        row = _row(line_no, record, errors)
        if row:
            rows.append(row)
    return rows


def _parse_csv(content: str, errors: list) -> list[PromptRow]:
    reader = csv.DictReader(io.StringIO(content, newline=""), strict=True)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "text" not in fields and "prompt" not in fields:
        errors.append((1, f"missing column 'text' (columns: {', '.join(fields) or 'none'})"))
        return []
    reader.fieldnames = fields
    rows = []
    try:
        for record in reader:
            line_no = reader.line_num
            if None in record:
                errors.append((line_no, "more cells than header columns"))
                continue
            row = _row(line_no, {k: v for k, v in record.items() if v is not None}, errors)
            if row:
                rows.append(row)
    except csv.Error as exc:
        errors.append((reader.line_num, f"bad CSV ({exc})"))
    return rows


# --- The demo set -------------------------------------------------------------

DEMO_INSTRUCTION = "Continue this movie review in two or three sentences:\n\n{start}"
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def demo_prompts_from_vader_sdist(sdist_path: str | Path, *, count: int = 400, held_out: int = 64, seed: int = 0):
    """Demo prompts: openings of real movie-review snippets from the VADER data set.

    The sdist of ``vaderSentiment==3.3.2`` carries
    ``additional_resources/hutto_ICWSM_2014.tar.gz`` (Hutto & Gilbert, ICWSM
    2014), whose ``movieReviewSnippets_GroundTruth.txt`` holds 10,605 snippets
    (id, mean human sentiment, text). Snippets of 12–60 words are cut after
    about half their words, and the model is asked to continue the review, so
    annotators judge a continuation of a real review. ``held_out`` of them are
    marked held out for evaluating versions.

    Returns a list of :class:`PromptRow`. Raises ApplicationError when the
    sdist or its data file is missing.
    """
    sdist_path = Path(sdist_path)
    if not sdist_path.exists():
        raise ApplicationError(f"{sdist_path} not found; run: pip download --no-deps --no-binary :all: vaderSentiment==3.3.2")
    with tarfile.open(sdist_path) as sdist:
        inner_name = next((n for n in sdist.getnames() if n.endswith("hutto_ICWSM_2014.tar.gz")), None)
        if inner_name is None:
            raise ApplicationError(f"{sdist_path.name} does not contain hutto_ICWSM_2014.tar.gz")
        inner = io.BytesIO(sdist.extractfile(inner_name).read())
    with tarfile.open(fileobj=inner) as data:
        text = data.extractfile(VADER_MEMBER).read().decode("utf-8")
    snippets = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        snippet_id, _sentiment, snippet = parts
        snippet = re.sub(r"\s+", " ", snippet.replace("''", '"')).strip()
        words = snippet.split(" ")
        if 12 <= len(words) <= 60:
            snippets.append((snippet_id, words))
    rng = random.Random(seed)
    rng.shuffle(snippets)
    rows = []
    for i, (snippet_id, words) in enumerate(snippets[:count]):
        start = " ".join(words[: max(6, len(words) // 2)])
        rows.append(
            PromptRow(
                line=i + 1,
                text=DEMO_INSTRUCTION.format(start=start),
                source=f"vader:movieReviewSnippets:{snippet_id}",
                held_out=i < held_out,
            )
        )
    return rows
