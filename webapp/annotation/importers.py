"""Reading prompt files (JSONL or CSV) and the demo prompt set.

A file is read as a stream, one physical line at a time, so memory does not
grow with its size. Lines end only at ``\\n`` (or ``\\r\\n``): U+2028, U+2029,
U+0085 and form feeds inside a JSON string or a CSV field are text, not line
breaks (Python's ``str.splitlines`` would split there). The file is validated
whole before anything is written: one bad line rejects the file, and the error
names the bad lines (the first ``MAX_REPORTED_ERRORS`` of them, with a count of
the rest) and why.

Caps (settings, see ``webapp/settings.py``): the file's size
(``REWARDLOOP_IMPORT_MAX_BYTES``), its number of lines
(``REWARDLOOP_IMPORT_MAX_LINES``) and the length of one line in bytes
(``REWARDLOOP_IMPORT_MAX_LINE_BYTES``). A file over a cap is rejected with the
cap's name.

JSONL: one JSON object per line, ``{"text": "...", "source": "...", "held_out": false}``
(blank lines are ignored).
CSV: a header row with a ``text`` column, optional ``source`` and ``held_out``
columns; a quoted field may span lines (the row, and any error in it, is numbered by the line it starts on).

Which field holds the prompt (``TEXT_FIELD_RULE``): ``text``; ``prompt`` is taken
instead only where there is no ``text`` (a file exported by a tool that names it so).
A CSV header with both, or a JSONL object with both, is ambiguous and rejected
(the header line rejects the whole CSV file), as is a CSV header naming a column
twice. Other columns are read by no one; each row says which field gave its text
(``PromptRow.text_field``) and which it left unread (``unread_fields``), so the
import preview can show both.
A NUL character (U+0000) in any field or column name rejects the line.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from webapp.errors import ApplicationError

from .models import PROMPT_MAX_CHARS
from .vader import demo_prompt_texts

MAX_REPORTED_ERRORS = 20
SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv"}
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"0", "false", "no", "n", ""}
_SKIP_CHUNK = 1 << 16
TEXT_FIELDS = ("text", "prompt")  # in order of preference; both at once is ambiguous
KNOWN_FIELDS = frozenset({*TEXT_FIELDS, "source", "held_out"})
TEXT_FIELD_RULE = "the prompt is read from the 'text' column, or from 'prompt' when there is no 'text'"


@dataclass(frozen=True)
class PromptRow:
    line: int
    text: str
    source: str = ""
    held_out: bool = False
    text_field: str = "text"  # the column (CSV) or key (JSONL) the text came from
    unread_fields: tuple[str, ...] = ()  # the row's other columns or keys, which the import ignores


def _text_field(names) -> tuple[str | None, str | None]:
    """``(field, problem)``: which of ``names`` holds the prompt's text under :data:`TEXT_FIELD_RULE`,
    or the reason there is none (missing, or both ``text`` and ``prompt``)."""
    present = [f for f in TEXT_FIELDS if f in names]
    if len(present) > 1:
        return None, f"both a 'text' and a 'prompt' field: which holds the prompt is ambiguous; keep one ({TEXT_FIELD_RULE})"
    if not present:
        near = [n for n in names if isinstance(n, str) and n.strip().lower() in TEXT_FIELDS]
        hint = f"; names are case-sensitive, found {', '.join(map(repr, near))}" if near else ""
        return None, f"missing field 'text'{hint}"
    return present[0], None


@dataclass(frozen=True)
class ImportLimits:
    """Caps on one prompt file; the defaults come from the settings of the same names."""

    max_bytes: int  # REWARDLOOP_IMPORT_MAX_BYTES: the whole file, in bytes
    max_lines: int  # REWARDLOOP_IMPORT_MAX_LINES: physical lines (ending at \n), header and blank lines included
    max_line_bytes: int  # REWARDLOOP_IMPORT_MAX_LINE_BYTES: one physical line, in bytes, without its line ending

    @classmethod
    def from_settings(cls) -> ImportLimits:
        from django.conf import settings

        return cls(
            max_bytes=settings.REWARDLOOP_IMPORT_MAX_BYTES,
            max_lines=settings.REWARDLOOP_IMPORT_MAX_LINES,
            max_line_bytes=settings.REWARDLOOP_IMPORT_MAX_LINE_BYTES,
        )


class PromptFileError(ApplicationError):
    """The file was rejected; ``errors`` lists ``(line, reason)`` (at most ``MAX_REPORTED_ERRORS``),
    ``total`` counts every bad line."""

    def __init__(self, name: str, errors: list[tuple[int, str]], total: int | None = None):
        total = len(errors) if total is None else total
        shown = "; ".join(f"line {line}: {reason}" for line, reason in errors[:MAX_REPORTED_ERRORS])
        hidden = total - min(len(errors), MAX_REPORTED_ERRORS)
        more = f" (and {hidden} more)" if hidden > 0 else ""
        super().__init__(f"{name} was not imported: {shown}{more}")
        self.errors = errors[:MAX_REPORTED_ERRORS]
        self.total = total


class _Errors:
    """The first ``MAX_REPORTED_ERRORS`` bad lines and a count of all of them (bounded memory)."""

    def __init__(self):
        self.shown: list[tuple[int, str]] = []
        self.total = 0

    def append(self, item: tuple[int, str]) -> None:
        self.total += 1
        if len(self.shown) < MAX_REPORTED_ERRORS:
            self.shown.append(item)

    def __bool__(self) -> bool:
        return self.total > 0


def _has_nul(value) -> bool:
    return isinstance(value, str) and "\x00" in value


def _row(line: int, record: dict, errors) -> PromptRow | None:
    for key, value in record.items():
        if _has_nul(key) or _has_nul(value):
            errors.append((line, f"{key.replace(chr(0), '')} contains a NUL character"))
            return None
    field, problem = _text_field(record)
    if problem:
        errors.append((line, problem))
        return None
    text = record[field]
    if not isinstance(text, str):
        errors.append((line, f"'{field}' must be a string, not {type(text).__name__}"))
        return None
    text = text.strip()
    if not text:
        errors.append((line, "empty text"))
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
    source = str(record.get("source") or "")  # a nested value's text form is its repr: no raw NUL
    unread = tuple(sorted(k for k in record if k not in KNOWN_FIELDS))
    return PromptRow(line=line, text=text, source=source[:200], held_out=held_out, text_field=field, unread_fields=unread)


class _Lines:
    """Physical lines of a binary file, split only at ``\\n`` (``\\r\\n`` too), decoded one by one.

    Yields ``(line_number, text)`` with the line ending kept (CSV needs it to
    join a quoted field across lines). A line longer than the cap, or not valid
    UTF-8, is recorded in ``errors`` and yielded as ``None`` (its bytes past
    the cap are skipped, never held). Stops, with an error, past the line cap.
    """

    def __init__(self, handle, limits: ImportLimits, errors):
        self.handle, self.limits, self.errors = handle, limits, errors
        self.line_no = 0

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        cap = self.limits.max_line_bytes
        while True:
            raw = self.handle.readline(cap + 2)  # room for "\r\n" after a line of exactly ``cap`` bytes
            if not raw:
                return
            self.line_no += 1
            if self.line_no > self.limits.max_lines:
                self.errors.append(
                    (self.line_no, f"the file has more than {self.limits.max_lines} lines (REWARDLOOP_IMPORT_MAX_LINES)")
                )
                return
            if self.line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
            if len(body) > cap:
                self.errors.append(
                    (self.line_no, f"the line is longer than {cap} bytes (REWARDLOOP_IMPORT_MAX_LINE_BYTES)")
                )
                while not raw.endswith(b"\n"):
                    raw = self.handle.readline(_SKIP_CHUNK)
                    if not raw:
                        break
                yield self.line_no, None
                continue
            try:
                yield self.line_no, raw.decode("utf-8")
            except UnicodeDecodeError:
                self.errors.append((self.line_no, "not valid UTF-8"))
                yield self.line_no, None


def _jsonl_rows(lines, errors) -> Iterator[PromptRow]:
    for line_no, line in lines:
        if line is None or not line.strip():
            continue
        text = line.rstrip("\r\n")  # the line's end is not JSON: an error there is "at the end of the line"
        try:
            # strict=False: a raw tab or form feed inside a string is text (\n cannot occur: it ends the line).
            record = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            where = "at the end of the line" if exc.pos >= len(text) else f"at column {exc.colno}"
            errors.append((line_no, f"bad JSON ({exc.msg} {where})"))
            continue
        if not isinstance(record, dict):
            errors.append((line_no, f"expected a JSON object, got {type(record).__name__}"))
            continue
        row = _row(line_no, record, errors)
        if row:
            yield row


def _csv_rows(lines, errors) -> Iterator[PromptRow]:
    # A bad line (already recorded) is fed to the reader as a blank one, so its line numbers stay exact.
    reader = csv.reader((text if text is not None else "\n" for _, text in lines), strict=True)
    fields = None
    start = 1  # the physical line the next row starts on: a row (or its error) is known by it, not by its last line
    try:
        for record in reader:
            line_no, start = start, reader.line_num + 1
            if not record:
                continue
            if fields is None:
                fields = [f.strip() for f in record]
                if any("\x00" in f for f in fields):
                    errors.append((line_no, "a column name contains a NUL character"))
                    return
                twice = sorted({f for f in fields if fields.count(f) > 1})
                if twice:
                    errors.append((line_no, f"the header names column(s) {', '.join(map(repr, twice))} twice"))
                    return
                _, problem = _text_field(fields)
                if problem:
                    problem = problem.replace("field", "column", 1)
                    errors.append((line_no, f"{problem} (columns: {', '.join(fields) or 'none'})"))
                    return
                continue
            if len(record) > len(fields):
                errors.append((line_no, "more cells than header columns"))
                continue
            record += [""] * (len(fields) - len(record))  # a row may end before the header's last (empty) cells
            row = _row(line_no, dict(zip(fields, record)), errors)
            if row:
                yield row
    except csv.Error as exc:
        errors.append((start, f"bad CSV ({exc})"))
    if fields is None and not errors:
        errors.append((1, "missing column 'text' (columns: none)"))


def iter_prompt_rows(path: str | Path, *, limits: ImportLimits | None = None) -> Iterator[PromptRow]:
    """Stream the valid rows of a JSONL or CSV prompt file (by extension; ``.json`` means JSONL).

    Reads one line at a time: memory stays bounded by the line cap whatever
    the file's size. Rows are yielded as they are read; after the last line,
    if any line was bad (or no prompt was found), raises
    :class:`PromptFileError`, so a consumer that stores rows must do so in a
    transaction that the error rolls back (see ``services.prompts_import``).

    Raises:
        PromptFileError: bad lines (line number and reason), or a cap exceeded
            (the file's size, its line count, one line's length).
        ApplicationError: unreadable file or unknown extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ApplicationError(f"{path.name}: unknown format {suffix!r}; use .jsonl or .csv")
    limits = limits or ImportLimits.from_settings()
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ApplicationError(f"{path}: cannot read ({exc.strerror})") from exc
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limits.max_bytes:
            raise PromptFileError(
                path.name,
                [(1, f"the file is {size} bytes; the limit is {limits.max_bytes} (REWARDLOOP_IMPORT_MAX_BYTES)")],
            )
        errors = _Errors()
        lines = _Lines(handle, limits, errors)
        parse = _csv_rows if suffix == ".csv" else _jsonl_rows
        n_rows = 0
        for row in parse(lines, errors):
            if not errors:  # once the file is known bad, only its errors matter
                n_rows += 1
                yield row
        if not errors and not n_rows:
            errors.append((1, "the file holds no prompts"))
        if errors:
            raise PromptFileError(path.name, errors.shown, errors.total)


def prompt_file_check(path: str | Path, *, limits: ImportLimits | None = None) -> int:
    """Validate a whole prompt file without keeping its rows; returns how many valid rows it holds.

    Raises what :func:`iter_prompt_rows` raises.
    """
    return sum(1 for _ in iter_prompt_rows(path, limits=limits))


def parse_prompt_file(path: str | Path, *, limits: ImportLimits | None = None) -> list[PromptRow]:
    """Every row of a valid prompt file, as a list (holds the whole file: for small files and tests).

    Raises what :func:`iter_prompt_rows` raises.
    """
    return list(iter_prompt_rows(path, limits=limits))


# --- The demo set -------------------------------------------------------------

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
    return [
        PromptRow(line=i + 1, text=text, source=f"vader:movieReviewSnippets:{snippet_id}", held_out=i < held_out)
        for i, (snippet_id, text) in enumerate(demo_prompt_texts(sdist_path, count=count, seed=seed))
    ]
