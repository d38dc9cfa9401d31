"""What each kind of human judgment means: as a reward, as an export row, as a level, as an agreement value.

The one home for these meanings; training's batch, the TRL exports, the
figures page (agreement) and the staff plots ask here rather than spelling a
judgment out again. The reward arithmetic itself is :mod:`pgcore.rewards`
(pure functions, no Django; imported only when a reward is asked for, since it
brings torch and web processes never import torch); this module maps stored
judgments onto it.

The judgment kinds (one :class:`~webapp.annotation.models.Rating` row each,
a pairwise decision being one :class:`~webapp.annotation.models.Comparison`
with a rating per completion):

============  ==================  =====================  ====================
kind          reward in [-1, 1]   KTO label              level (plots, pairs)
============  ==================  =====================  ====================
Likert s      ``(s - 3) / 2``     4–5 true, 1–2 false,   s in [1, 5]
                                  3 none (neutral)
thumbs        up +1, down -1      up true, down false    up 1, down 0
pair: a / b   winner +1, loser -1 winner true, loser     (none: says nothing
                                  false                  about the level)
pair: tie     0 / 0               none                   —
pair: both    -1 / -1             false / false          —
bad
rank r of k   ``(k-1-2r)/(k-1)``  above the middle true, (none; its implied
(0 = best)    (mean of its k-1    below false, middle    pairs are preference
              implied pairs)      none                   pairs)
rubric        weighted mean of    overall level > 3      weighted mean score
(criteria     ``(s_i - 3) / 2``   true, < 3 false,       in [1, 5]
s_i, w_i)     by ``w_i``          3 none
============  ==================  =====================  ====================

A rubric rating stores each criterion's name, weight and score as they were when
it was given, so a later change of the rubric (or of the project's mode) leaves
its reward and export row as they were.

A ranking of k is stored as the k(k-1)/2 pairwise comparisons it implies
(:func:`ranking_implied_pairs`, one :class:`~webapp.annotation.models.RankedPair`
each), so exports and the reward model read them as preference pairs; its
reward per completion is the mean of the pairwise rewards it implies.
"""

from __future__ import annotations

from .models import Choice

NEUTRAL_LIKERT = 3
# Nominal codes for pairwise choices in agreement statistics (Krippendorff's alpha).
CHOICE_CODES: dict[str, int] = {c: i for i, c in enumerate(Choice.values)}


def reward_score(
    *,
    score: int | None,
    thumbs_up: bool | None,
    choice: str | None,
    is_completion_a: bool,
    rank: int | None = None,
    n_ranked: int | None = None,
    criteria: list[dict] | None = None,
) -> float:
    """One stored rating's score in [-1, 1], before per-annotator normalisation.

    Args:
        score: Likert 1–5, or None.
        thumbs_up: thumbs, or None.
        choice: the pairwise decision (a :class:`Choice` value) this rating belongs to, or None.
        is_completion_a: for a pairwise rating, whether it rates the pair's completion A.
        rank: for a ranking's rating, the completion's place (0 = best), else None.
        n_ranked: for a ranking's rating, how many completions the ranking orders (k).
        criteria: for a rubric rating, its stored ``[{"name", "weight", "score"}]``.

    Raises:
        ValueError: none is set, or a value is out of range (``pgcore.rewards``).
    """
    from pgcore.rewards import judgment_to_score  # the one mapping; imports torch: workers only

    return judgment_to_score(
        score=score,
        thumbs_up=thumbs_up,
        choice=choice,
        is_a=is_completion_a,
        rank=rank,
        n_ranked=n_ranked,
        criteria=None if criteria is None else [(c["score"], c["weight"]) for c in criteria],
    )


def rubric_level(criteria: list[dict]) -> float:
    """A rubric rating's overall level: the weighted mean of its criteria's scores, in [1, 5]."""
    return sum(c["weight"] * c["score"] for c in criteria) / sum(c["weight"] for c in criteria)


def ranking_implied_pairs(order: list[int]) -> list[tuple[int, int]]:
    """The pairwise comparisons a ranking implies: ``(winner, loser)`` for every two of ``order``
    (completion ids, best first), the better-ranked one winning; k(k-1)/2 of them."""
    return [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]


def rank_kto_label(*, rank: int, n_ranked: int) -> bool | None:
    """A ranked completion as an unpaired (KTO) label: the upper half true, the lower half
    false, the middle one of an odd k none (the sign of its reward)."""
    twice_from_middle = (n_ranked - 1) - 2 * rank
    return None if twice_from_middle == 0 else twice_from_middle > 0


def rank_level(*, rank: int) -> float:
    """A ranked completion's place as a level for agreement statistics: 1 = best ... k = worst."""
    return float(rank + 1)


def kto_label(*, score: int | None, thumbs_up: bool | None, criteria: list[dict] | None = None) -> bool | None:
    """A Likert, thumbs or rubric rating as an unpaired (KTO) label; None for a neutral Likert 3
    (a rubric's overall level of exactly 3) or no value."""
    if thumbs_up is not None:
        return thumbs_up
    if score is None and criteria is not None:
        overall = rubric_level(criteria)
        return None if overall == NEUTRAL_LIKERT else overall > NEUTRAL_LIKERT
    if score is not None and score != NEUTRAL_LIKERT:
        return score > NEUTRAL_LIKERT
    return None


def pairwise_kto_labels(choice: str) -> tuple[bool, bool] | None:
    """A pairwise decision as KTO labels ``(label_a, label_b)``; None for a tie (no row)."""
    return {Choice.A: (True, False), Choice.B: (False, True), Choice.BOTH_BAD: (False, False)}.get(choice)


def pairwise_winner(choice: str) -> str | None:
    """``"a"`` or ``"b"`` when the decision has a winner (a preference pair), else None (tie, both bad)."""
    return {Choice.A: "a", Choice.B: "b"}.get(choice)


def level(*, score: int | None, thumbs_up: bool | None, criteria: list[dict] | None = None) -> float | None:
    """A single rating's level: the Likert score (1–5), a rubric's weighted mean score (1–5),
    thumbs up 1.0 / down 0.0; None for none of them."""
    if score is not None:
        return float(score)
    if criteria is not None:
        return rubric_level(criteria)
    if thumbs_up is not None:
        return 1.0 if thumbs_up else 0.0
    return None


# --- Gold items: known answers --------------------------------------------------------
#
# What a gold item's ``answer`` holds, by the kind of item, and what counts as right:
#
# ============  ==========================================  ===============================
# item          answer                                      a judgment is right when
# ============  ==========================================  ===============================
# Likert        ``{"score": s, "tolerance": t}`` (t 0–4,    ``|score - s| <= t``
#               default 0)
# thumbs        ``{"thumbs_up": true}``                     the same thumb
# pair          ``{"choice": "a"}`` (a, b, tie, both_bad)   the same choice
# rank group    ``{"best": completion id}``                 that output is ranked first
# ============  ==========================================  ===============================


def gold_answer_clean(answer, *, kind: str, members: list[int] | None = None) -> dict:
    """A gold answer checked and normalised for an item of ``kind`` (``likert``, ``thumbs``,
    ``pairwise``, ``ranking``; ``members``: a rank group's completion ids).

    Raises:
        ValueError: the answer does not fit the kind (the message says what would).
    """
    if not isinstance(answer, dict):
        raise ValueError("A gold answer is an object, e.g. {\"score\": 4}.")
    if kind == "pairwise":
        if answer.get("choice") not in Choice.values or set(answer) != {"choice"}:
            raise ValueError(f"A pair's gold answer is {{\"choice\": one of {', '.join(Choice.values)}}}.")
        return {"choice": answer["choice"]}
    if kind == "ranking":
        best = answer.get("best")
        if set(answer) != {"best"} or isinstance(best, bool) or best not in (members or []):
            raise ValueError("A ranking's gold answer is {\"best\": the id of one of its outputs}.")
        return {"best": best}
    if kind == "thumbs":
        if set(answer) != {"thumbs_up"} or not isinstance(answer["thumbs_up"], bool):
            raise ValueError("A thumbs gold answer is {\"thumbs_up\": true} or {\"thumbs_up\": false}.")
        return {"thumbs_up": answer["thumbs_up"]}
    score, tolerance = answer.get("score"), answer.get("tolerance", 0)
    ok = set(answer) <= {"score", "tolerance"}
    for value, low, high in ((score, 1, 5), (tolerance, 0, 4)):
        ok = ok and not isinstance(value, bool) and isinstance(value, int) and low <= value <= high
    if not ok:
        raise ValueError("A Likert gold answer is {\"score\": 1–5, \"tolerance\": 0–4 (optional, default 0)}.")
    return {"score": score, "tolerance": tolerance}


def gold_correct(
    answer: dict,
    *,
    score: int | None = None,
    thumbs_up: bool | None = None,
    choice: str | None = None,
    order: list[int] | None = None,
) -> bool:
    """Whether one judgment of a gold item matches its ``answer`` (see the table above); a
    judgment of another kind than the answer (the project's mode changed) is wrong."""
    if "choice" in answer:
        return choice == answer["choice"]
    if "best" in answer:
        return bool(order) and order[0] == answer["best"]
    if "thumbs_up" in answer:
        return thumbs_up is answer["thumbs_up"]
    return score is not None and abs(score - answer["score"]) <= answer.get("tolerance", 0)
