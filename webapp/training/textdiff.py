"""Word-level differences between two texts, for showing two versions' outputs side by side.

Built on :class:`difflib.SequenceMatcher` (Ratcliff/Obershelp matching, Python's
standard library) over word and whitespace tokens, so the two sides read as the
original texts with the changed words marked.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_TOKENS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class Segment:
    text: str
    changed: bool  # only on this side: deleted (left) or inserted (right)


def _tokens(text: str) -> list[str]:
    return _TOKENS.findall(text)


def _merge(segments: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for seg in segments:
        if merged and merged[-1].changed == seg.changed:
            merged[-1] = Segment(merged[-1].text + seg.text, seg.changed)
        else:
            merged.append(seg)
    return merged


def word_diff(left: str, right: str) -> tuple[list[Segment], list[Segment], float]:
    """Each text as segments, changed words marked, and the share of words the two have in common.

    Args:
        left, right: the two texts (any length; whitespace is kept as it is).

    Returns:
        ``(left_segments, right_segments, similarity)``: joined, each side's segments give
        back its text exactly; ``changed`` marks words found only on that side (whitespace
        between two changed words counts as changed). ``similarity`` is difflib's ratio
        over words, ``2·M / (len(left words) + len(right words))``, 1.0 for two empty texts.
    """
    a, b = _tokens(left), _tokens(right)
    # Whitespace never anchors a match on its own ("junk" in difflib's terms), so runs of
    # changed words are not cut into pieces at every space.
    matcher = difflib.SequenceMatcher(isjunk=str.isspace, a=a, b=b, autojunk=False)
    out_a: list[Segment] = []
    out_b: list[Segment] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        same = op == "equal"
        if i2 > i1:
            out_a.append(Segment("".join(a[i1:i2]), not same))
        if j2 > j1:
            out_b.append(Segment("".join(b[j1:j2]), not same))
    words_a = [t for t in a if not t.isspace()]
    words_b = [t for t in b if not t.isspace()]
    similarity = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False).ratio() if (words_a or words_b) else 1.0
    return _merge(out_a), _merge(out_b), similarity
