"""Human ratings to scalar rewards.

Scores live in [-1, 1]: Likert 1-5 maps to ``(s - 3) / 2``, thumbs to +-1, a pairwise
choice gives the winner +1 and the loser -1, a ranking of k gives each completion the mean of
the k-1 pairwise outcomes it implies. People rate on different scales, so each
annotator's scores are mapped onto the global distribution of scores (a z-score whose
mean and standard deviation are shrunk toward the global ones for annotators with few
ratings), and several ratings of one completion are averaged afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PAIRWISE_CHOICES = {"a": (1.0, -1.0), "b": (-1.0, 1.0), "tie": (0.0, 0.0), "both_bad": (-1.0, -1.0)}
_MIN_STD = 1e-6


def likert_to_score(s: float) -> float:
    """Likert rating 1..5 to a score in [-1, 1]: ``(s - 3) / 2``.

    Raises:
        ValueError: ``s`` is not a finite number in [1, 5].
    """
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 1 <= s <= 5:
        raise ValueError(f"a Likert rating must be a number in [1, 5], got {s!r}")
    return (float(s) - 3.0) / 2.0


def thumbs_to_score(up: bool) -> float:
    """Thumbs up to +1.0, thumbs down to -1.0.

    Raises:
        ValueError: ``up`` is not a bool.
    """
    if not isinstance(up, bool):
        raise ValueError(f"a thumbs rating must be True (up) or False (down), got {up!r}")
    return 1.0 if up else -1.0


def pairwise_to_scores(choice: str) -> tuple[float, float]:
    """A pairwise choice between completions a and b to ``(score_a, score_b)``.

    ``"a"`` -> (1, -1), ``"b"`` -> (-1, 1), ``"tie"`` -> (0, 0), ``"both_bad"`` -> (-1, -1).
    With two samples, the leave-one-out advantage of these scores is (score_a - score_b,
    score_b - score_a): a win pushes the pair apart, a tie or "both bad" cancels within the
    pair (the latter still lowers both wherever a batch baseline is used).

    Raises:
        ValueError: ``choice`` is not one of the four.
    """
    try:
        return PAIRWISE_CHOICES[choice]
    except (KeyError, TypeError):
        raise ValueError(f"a pairwise choice must be one of {sorted(PAIRWISE_CHOICES)}, got {choice!r}") from None


def rank_to_score(rank: int, k: int) -> float:
    """A completion's place in a ranking of ``k`` (``rank`` 0 = best) to a score in [-1, 1].

    A ranking implies k(k-1)/2 pairwise comparisons; the completion at ``rank`` wins
    ``k - 1 - rank`` of its ``k - 1`` and loses ``rank``. Its score is the mean of those
    pairwise outcomes (+1 a win, -1 a loss, as :func:`pairwise_to_scores`):
    ``(k - 1 - 2 * rank) / (k - 1)``. With ``k = 2`` this is the pairwise choice exactly;
    the scores of one ranking sum to zero, so the leave-one-out advantage within the group
    is unchanged by them (the Plackett-Luce order broken into pairs, as in RLHF reward
    modelling from rankings: Ouyang et al. 2022, section 3.5).

    Raises:
        ValueError: ``k`` < 2, or ``rank`` not a whole number in ``[0, k)``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"a ranking orders at least 2 completions, got k={k!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < k:
        raise ValueError(f"a rank must be a whole number in [0, {k}), got {rank!r}")
    return (k - 1 - 2 * rank) / (k - 1)


def rubric_to_score(scores: list[float], weights: list[float]) -> float:
    """Rubric scores (each criterion 1-5) to one score in [-1, 1]: the weighted mean of the
    criteria's Likert scores, ``sum_i w_i (s_i - 3) / 2 / sum_i w_i`` (the weighted sum with
    the weights normalised to 1).

    Raises:
        ValueError: no criteria, lists of different lengths, a score outside [1, 5] or a
            weight that is not a finite number > 0.
    """
    if not scores or len(scores) != len(weights):
        raise ValueError(f"a rubric rating needs one weight per score, got {len(scores)} scores and {len(weights)} weights")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"a rubric weight must be a finite number > 0, got {w!r}")
    return sum(w * likert_to_score(s) for s, w in zip(scores, weights)) / sum(weights)


def judgment_to_score(
    *,
    score: int | None,
    thumbs_up: bool | None,
    choice: str | None,
    is_a: bool,
    rank: int | None = None,
    n_ranked: int | None = None,
    criteria: list[tuple[float, float]] | None = None,
) -> float:
    """One stored judgment to a score in [-1, 1], whatever its kind.

    A Likert ``score`` (1-5) if given, else a ``thumbs_up``, else a ``rank`` in a ranking
    of ``n_ranked`` completions, else rubric ``criteria`` (``(score, weight)`` pairs), else this completion's side (``is_a``: it is the pair's
    completion a) of a pairwise ``choice``; see the functions above.

    Raises:
        ValueError: the value is not valid for its kind.
    """
    if score is not None:
        return likert_to_score(score)
    if thumbs_up is not None:
        return thumbs_to_score(thumbs_up)
    if rank is not None:
        return rank_to_score(rank, n_ranked)
    if criteria is not None:
        return rubric_to_score([s for s, _ in criteria], [w for _, w in criteria])
    score_a, score_b = pairwise_to_scores(choice)
    return score_a if is_a else score_b


@dataclass
class RatingRecord:
    """One person's rating of one completion.

    Attributes:
        completion_index: index of the rated completion in the batch, in ``[0, n)``.
        annotator: who rated (any hashable id).
        score: the rating already mapped to [-1, 1] (see the ``*_to_score`` functions).
        weight: how much the rating counts in its completion's mean, >= 0 (default 1; e.g.
            lower for an annotator who failed gold checks).
    """

    completion_index: int
    annotator: str | int
    score: float
    weight: float = 1.0


def ratings_to_rewards(
    ratings: list[RatingRecord],
    n_completions: int,
    *,
    annotator_norm: bool = True,
    shrinkage: float = 5.0,
) -> torch.Tensor:
    """Per-completion rewards from individual ratings.

    With ``annotator_norm`` each score ``x`` of annotator ``a`` becomes
    ``m + s * (x - m_a) / s_a`` where ``m, s`` are the mean and standard deviation of all
    scores and ``m_a, s_a`` the annotator's, shrunk toward the global ones by ``shrinkage``
    pseudo-ratings: ``m_a = (n_a * mean_a + k * m) / (n_a + k)`` and
    ``s_a**2 = (n_a * var_a + k * s**2) / (n_a + k)``. So a harsh annotator's 3 counts like
    a lenient one's 4, a lone annotator's scores are unchanged, and an annotator with one
    rating moves only a little. When ``s_a`` is ~0 (all scores equal) only the mean shift is
    applied, so no division by zero can occur. Then the normalised scores of each
    completion are averaged, each weighted by its ``weight`` (a completion whose ratings
    all weigh 0 takes their plain mean). The normalisation statistics are unweighted.

    Args:
        ratings: one record per rating.
        n_completions: ``N``, the number of completions in the batch.
        annotator_norm: apply the per-annotator normalisation (False: raw scores).
        shrinkage: ``k`` >= 0 pseudo-ratings.

    Returns:
        ``rewards (N,)`` float32, finite, in the units of the scores.

    Raises:
        ValueError: a score is NaN or infinite (the message names the rating, annotator and
            completion), an index is out of range, a completion has no rating, or
            ``shrinkage`` < 0.
    """
    if not (isinstance(shrinkage, (int, float)) and math.isfinite(shrinkage) and shrinkage >= 0):
        raise ValueError(f"shrinkage must be a finite number >= 0, got {shrinkage!r}")
    for i, r in enumerate(ratings):
        if not math.isfinite(float(r.score)):
            raise ValueError(
                f"rating {i} (annotator {r.annotator!r}, completion {r.completion_index}) has non-finite score {r.score}"
            )
        if not 0 <= r.completion_index < n_completions:
            raise ValueError(f"rating {i} has completion_index {r.completion_index}, outside [0, {n_completions})")
        if not (math.isfinite(float(r.weight)) and r.weight >= 0):
            raise ValueError(f"rating {i} has weight {r.weight}; weights are finite and >= 0")
    unrated = sorted(set(range(n_completions)) - {r.completion_index for r in ratings})
    if unrated:
        raise ValueError(f"completions {unrated} have no rating; every completion needs at least one")
    if n_completions == 0:
        return torch.zeros(0, dtype=torch.float32)

    scores = torch.tensor([float(r.score) for r in ratings], dtype=torch.float64)  # (R,)
    index = torch.tensor([r.completion_index for r in ratings], dtype=torch.long)  # (R,)
    if annotator_norm:
        names = {a: j for j, a in enumerate(dict.fromkeys(r.annotator for r in ratings))}
        who = torch.tensor([names[r.annotator] for r in ratings], dtype=torch.long)  # (R,)
        A = len(names)
        mean, var = scores.mean(), scores.var(unbiased=False)
        count = torch.zeros(A, dtype=torch.float64).index_add_(0, who, torch.ones_like(scores))  # (A,)
        total = torch.zeros(A, dtype=torch.float64).index_add_(0, who, scores)
        mean_a = total / count
        var_a = torch.zeros(A, dtype=torch.float64).index_add_(0, who, (scores - mean_a[who]) ** 2) / count
        k = float(shrinkage)
        shrunk_mean = (count * mean_a + k * mean) / (count + k)
        shrunk_std = ((count * var_a + k * var) / (count + k)).sqrt()
        scale = torch.where(shrunk_std > _MIN_STD, var.sqrt() / shrunk_std.clamp(min=_MIN_STD), 1.0)  # (A,)
        scores = mean + scale[who] * (scores - shrunk_mean[who])
    weights = torch.tensor([float(r.weight) for r in ratings], dtype=torch.float64)  # (R,)
    sums = torch.zeros(n_completions, dtype=torch.float64).index_add_(0, index, weights * scores)
    totals = torch.zeros(n_completions, dtype=torch.float64).index_add_(0, index, weights)  # (N,)
    plain = torch.zeros(n_completions, dtype=torch.float64).index_add_(0, index, scores)
    counts = torch.zeros(n_completions, dtype=torch.float64).index_add_(0, index, torch.ones_like(scores))
    return torch.where(totals > 0, sums / totals.clamp(min=1e-300), plain / counts).float()

