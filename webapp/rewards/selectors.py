"""Reads for reward models."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, QuerySet

from webapp.annotation.models import ChosenBy, Lease, Rating
from webapp.annotation.selectors import trainable_ratings
from webapp.policies.models import Project

from .models import RewardModelVersion


def reward_model_versions(*, project: Project) -> QuerySet[RewardModelVersion]:
    """The project's reward-model versions, newest first."""
    return RewardModelVersion.objects.filter(project=project).order_by("-number")


def reward_model_latest(*, project: Project) -> RewardModelVersion | None:
    return reward_model_versions(project=project).first()


@dataclass(frozen=True)
class RatingRow:
    """One stored judgment, as the reward model reads it."""

    rating_id: int
    completion_id: int
    prompt_id: int
    annotator_id: int
    score: int | None
    thumbs_up: bool | None
    choice: str | None  # pairwise only: the comparison's choice
    comparison_id: int | None
    anchor_id: int | None  # pairwise only: the pair's completion a
    ranking_id: int | None = None  # ranking only: the ranking this rating is one place of
    rank: int | None = None  # ranking only: this completion's place, 0 = best
    source: str = "annotator"  # Rating.Source: annotator, or production (feedback on an API answer)


def rating_rows(*, project: Project) -> list[RatingRow]:
    """Every rating the reward model may fit on, by id: the same ratings training may use
    (:func:`webapp.annotation.selectors.trainable_ratings`: no held-out prompt, no gold item),
    without production feedback while the project's ``production_feedback_weight`` is 0
    (then it trains nothing)."""
    ratings = trainable_ratings(project=project)
    if project.production_feedback_weight == 0:
        ratings = ratings.exclude(source=Rating.Source.PRODUCTION)
    rows = (
        ratings
        .order_by("id")
        .values_list(
            "id",
            "completion_id",
            "completion__prompt_id",
            "annotator_id",
            "score",
            "thumbs_up",
            "comparison__choice",
            "comparison_id",
            "comparison__pair__completion_a_id",
            "ranking_id",
            "rank",
            "source",
        )
    )
    return [RatingRow(*row) for row in rows]


def judgment_count(*, project: Project) -> int:
    """Rated completions (Likert/thumbs) plus comparisons plus the pairwise comparisons rankings imply:
    what the reward model counts as judgments."""
    rows = rating_rows(project=project)
    rated = {r.completion_id for r in rows if r.comparison_id is None and r.ranking_id is None}
    comparisons = {r.comparison_id for r in rows if r.comparison_id is not None}
    places: dict[int, int] = {}
    for r in rows:
        if r.ranking_id is not None:
            places[r.ranking_id] = places.get(r.ranking_id, 0) + 1
    return len(rated) + len(comparisons) + sum(k * (k - 1) // 2 for k in places.values())


def served_by_reason(*, project: Project) -> list[tuple[str, int]]:
    """How many items the queue served for each reason (``Lease.chosen_by``), rated or still leased."""
    counts = dict(
        Lease.objects.filter(completion__project=project)
        .values_list("chosen_by")
        .annotate(n=Count("id"))
        .values_list("chosen_by", "n")
    )
    return [(label, counts.get(value, 0)) for value, label in ChosenBy.choices]
