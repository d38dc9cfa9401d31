"""Simulated annotators for the learning benchmark (``bench/learning.py``).

What they want is a *rater* (``bench/raters.py``, chosen with ``--rater``): the
bias- and noise-free score in [1, 5] of a completion. The annotators here add what
people add: bias, noise, clipping and delay. The default rater stands in for people
who want "warm, upbeat replies": the rating of a completion comes from the VADER
compound sentiment of its text (Hutto & Gilbert, ICWSM 2014; the ``vaderSentiment``
wheel ships its lexicon, so this is offline and fast).

The scale, fixed before any learning run and not tuned afterwards:

- ``ideal_rating(text) = clip(round(3 + 2 * compound), 1, 5)``: compound in
  [-1, 1] is mapped linearly onto the Likert range [1, 5] and rounded to the
  nearest whole point (halves round up). This is the bias- and noise-free
  rating the benchmark evaluates with.
- Annotator ``k`` rates ``clip(round_half_up(ideal) + bias_k + noise, 1, 5)``
  (a rater may return a fraction; people give whole points), where ``noise``
  is ``+1`` or ``-1`` (equally likely) with probability ``noise_prob_k`` and 0
  otherwise. Clipping means a lenient annotator cannot tell a 4 from a 5, as
  with people.
- Each annotator holds an item for an exponentially distributed time with mean
  ``mean_delay_s_k`` (virtual seconds) before the rating arrives, so a rating
  can land after a newer model version was promoted: it then rates a
  completion of an older version than the one being trained.

Nothing here imports Django or torch: the annotators see only completion text.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

LIKERT_MIN, LIKERT_MAX = 1, 5


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def compound(text: str) -> float:
    """VADER compound sentiment of ``text``, in [-1, 1] (0 for empty text)."""
    return float(_analyzer().polarity_scores(text)["compound"])


def clip_likert(value: int) -> int:
    """Clip a whole number to the Likert range 1–5."""
    return max(LIKERT_MIN, min(LIKERT_MAX, int(value)))


def compound_to_likert(c: float) -> int:
    """Map a compound score in [-1, 1] to Likert 1–5: ``clip(round_half_up(3 + 2c), 1, 5)``."""
    return clip_likert(math.floor(3 + 2 * c + 0.5))


def ideal_rating(text: str) -> int:
    """The bias- and noise-free simulated rating of a completion, 1–5."""
    return compound_to_likert(compound(text))


@dataclass(frozen=True)
class SimulatedAnnotator:
    """One simulated person.

    Attributes:
        name: username of the annotator's account.
        bias: whole points added to every rating (+1: rates everything one point higher).
        noise_prob: probability, in [0, 1], that a rating is moved one point up or down.
        mean_delay_s: mean of the exponential time (virtual seconds) from lease to rating, > 0.
    """

    name: str
    bias: int = 0
    noise_prob: float = 0.0
    mean_delay_s: float = 30.0

    def __post_init__(self):
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        if not self.mean_delay_s > 0:
            raise ValueError(f"mean_delay_s must be > 0, got {self.mean_delay_s}")

    def rate_ideal(self, ideal: float, rng: random.Random) -> int:
        """This annotator's whole-point rating of an item whose ideal rating is ``ideal`` in [1, 5]
        (rounded half up, then bias, noise, clip); draws one or two numbers from ``rng``."""
        noise = rng.choice((-1, 1)) if rng.random() < self.noise_prob else 0
        return clip_likert(math.floor(ideal + 0.5) + self.bias + noise)

    def rate(self, text: str, rng: random.Random) -> int:
        """This annotator's Likert rating of ``text``; draws from ``rng`` (one or two numbers)."""
        return self.rate_ideal(ideal_rating(text), rng)

    def delay(self, rng: random.Random) -> float:
        """Seconds (virtual) this annotator keeps a leased item before rating it."""
        return rng.expovariate(1.0 / self.mean_delay_s)


# The default team: one lenient and one harsh annotator (a point up, a point
# down), two neutral ones, different noise levels, and one slow annotator
# whose ratings often land after the next version is out.
DEFAULT_TEAM = (
    SimulatedAnnotator("sim-lenient", bias=+1, noise_prob=0.2, mean_delay_s=20.0),
    SimulatedAnnotator("sim-harsh", bias=-1, noise_prob=0.2, mean_delay_s=30.0),
    SimulatedAnnotator("sim-neutral", bias=0, noise_prob=0.1, mean_delay_s=45.0),
    SimulatedAnnotator("sim-slow", bias=0, noise_prob=0.3, mean_delay_s=240.0),
)


def default_team(k: int = 4) -> list[SimulatedAnnotator]:
    """``k`` annotators: the default team of four, repeated (renamed) when ``k > 4``.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"need at least one annotator, got {k}")
    team = []
    for i in range(k):
        proto = DEFAULT_TEAM[i % len(DEFAULT_TEAM)]
        name = proto.name if i < len(DEFAULT_TEAM) else f"{proto.name}-{i // len(DEFAULT_TEAM) + 1}"
        team.append(SimulatedAnnotator(name, proto.bias, proto.noise_prob, proto.mean_delay_s))
    return team
