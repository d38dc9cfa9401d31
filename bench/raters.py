"""What the simulated annotators of ``bench/learning.py`` want: pluggable raters.

A *rater* is any callable ``rater(prompt, completion) -> float``: the bias- and noise-free
Likert score in [1, 5] that a person with a given taste would give ``completion`` (the
model's text, without the prompt) as an answer to ``prompt``. The benchmark evaluates
every version with it (held-out prompts) and its simulated annotators rate from it,
adding their own bias, noise, clipping and delay (``bench/simulated_annotators.py``).

Select one with ``bench/learning.py --rater SPEC``: a built-in name below, or
``package.module:callable`` for one the benchmark has never seen (the module must be
importable, e.g. from the repository root or ``PYTHONPATH``; ``callable`` may be a
dotted attribute path such as ``module:Class.method``).

Built in (fixed before any learning run, not tuned afterwards):

- ``vader``: warm, upbeat replies: ``clip(round_half_up(3 + 2 * compound), 1, 5)`` with
  ``compound`` the VADER sentiment of the completion (Hutto & Gilbert, ICWSM 2014). The
  benchmark's original objective; SmolLM2 starts high on it (about 3.7).
- ``critical``: its mirror, ``6 - vader``: a reader who wants critical, negative
  reviews. SmolLM2 starts low on it (about 2.3), so +1.0 has headroom.
- ``concise``: not about sentiment at all: a finished reply of at most 12 words scores 5;
  each further 8 words cost a point, not ending a sentence (``. ! ?`` possibly followed by
  a closing quote or bracket) costs one more, fewer than 3 words score at most 2;
  clipped to [1, 5] and not rounded (annotators round).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from bench.simulated_annotators import LIKERT_MAX, LIKERT_MIN, compound_to_likert, compound


class RaterError(ValueError):
    """A rater spec cannot be loaded, or a rater returned something that is not a Likert score."""


def vader(prompt: str, completion: str) -> float:
    """Warm, upbeat replies: Likert from the completion's VADER compound sentiment (1-5, whole points)."""
    return float(compound_to_likert(compound(completion)))


def critical(prompt: str, completion: str) -> float:
    """Critical, negative replies: ``6 - vader`` (1-5, whole points)."""
    return float(6 - compound_to_likert(compound(completion)))


CONCISE_WORDS = 12  # a finished reply this short, or shorter, scores 5
CONCISE_WORDS_PER_POINT = 8.0  # each further this many words cost one point
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")


def concise(prompt: str, completion: str) -> float:
    """Short, finished replies (1-5, continuous); see the module docstring for the scale."""
    words = len(completion.split())
    score = LIKERT_MAX - max(0, words - CONCISE_WORDS) / CONCISE_WORDS_PER_POINT
    if not _SENTENCE_END.search(completion):
        score -= 1.0
    if words < 3:
        score = min(score, 2.0)
    return float(min(LIKERT_MAX, max(LIKERT_MIN, score)))


BUILTIN = {"vader": vader, "critical": critical, "concise": concise}

_PROBE = ("The film opens in a small town,", " and the acting is good. I liked it.")


@dataclass(frozen=True)
class Rater:
    """A loaded rater: ``rater(prompt, completion)`` returns its checked score.

    Attributes:
        spec: what it was loaded from (a built-in name or ``package.module:callable``).
        fn: the callable itself.
    """

    spec: str
    fn: Callable[[str, str], float]

    def __call__(self, prompt: str, completion: str) -> float:
        """The score, a float in [1, 5].

        Raises:
            RaterError: the callable raised, or returned a non-number, NaN, or a value
                outside [1, 5]; the message names the rater and the completion.
        """
        try:
            value = self.fn(prompt, completion)
        except Exception as exc:  # a foreign callable: say whose it was
            raise RaterError(f"rater {self.spec} failed on completion {completion[:80]!r}: {type(exc).__name__}: {exc}") from exc
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RaterError(f"rater {self.spec} returned {value!r} for completion {completion[:80]!r}; expected a number in [1, 5]")
        if not LIKERT_MIN <= value <= LIKERT_MAX:
            raise RaterError(f"rater {self.spec} returned {value!r} for completion {completion[:80]!r}; a Likert score is in [1, 5]")
        return float(value)


def load_rater(spec: str) -> Rater:
    """Load a rater from a built-in name or ``package.module:callable`` and try it once.

    Raises:
        RaterError: a malformed spec, a module that cannot be imported, a missing or
            non-callable attribute, or a callable that fails or goes outside [1, 5] on a
            probe completion. The message says which, and what a spec looks like.
    """
    spec = (spec or "").strip()
    if spec in BUILTIN:
        rater = Rater(spec, BUILTIN[spec])
    else:
        module_name, sep, attr_path = spec.partition(":")
        if not sep or not module_name or not attr_path:
            raise RaterError(
                f"--rater {spec!r}: expected package.module:callable or a built-in name ({', '.join(BUILTIN)})"
            )
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise RaterError(f"--rater {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from exc
        for part in attr_path.split("."):
            if not hasattr(obj, part):
                raise RaterError(f"--rater {spec!r}: {module_name!r} has no attribute {attr_path!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise RaterError(f"--rater {spec!r}: {attr_path!r} is a {type(obj).__name__}, not a callable(prompt, completion)")
        rater = Rater(spec, obj)
    rater(*_PROBE)  # fail now, with a clear message, rather than an hour into a run
    return rater
