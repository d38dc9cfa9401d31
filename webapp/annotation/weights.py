"""How much each rating counts when a model learns from it: the one rule that policy updates
(:func:`webapp.training.services.training_batch_build`) and reward-model fits
(:func:`webapp.rewards.services.judgments_build`) both apply.

Two factors, both read from the project:

- **gold**: an annotator who answered at least ``gold_min_answers`` gold items with an accuracy
  below ``gold_min_accuracy`` weighs ``gold_low_weight``; everyone else 1
  (:func:`webapp.annotation.selectors.annotator_weights`). Within one completion's ratings, each
  rating counts with its rater's gold weight in the (normalised) mean.
- **source**: production feedback weighs ``production_feedback_weight``, an annotator's rating 1.

A judgment's weight (a rated completion's in a policy update or a reward-model regression, one
comparison's in a reward-model fit) is the mean source weight over its ratings times the largest
gold weight among its raters: 1 unless only down-weighted annotators judged it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from webapp.policies.models import Project

PRODUCTION = "production"  # Rating.Source.PRODUCTION


@dataclass(frozen=True)
class RatingWeights:
    """One project's weights, read once per batch or fit (:func:`rating_weights`)."""

    gold: Mapping[int, float]  # annotator id -> gold weight in [0, 1]; an annotator not listed weighs 1
    production: float  # the project's production_feedback_weight, >= 0

    def in_mean(self, annotator_id: int) -> float:
        """A rating's weight among its completion's ratings: its rater's gold weight."""
        return float(self.gold.get(annotator_id, 1.0))

    def source(self, source: str) -> float:
        """A rating's source weight: ``production`` for production feedback, else 1."""
        return self.production if source == PRODUCTION else 1.0

    def judgment(self, raters: Iterable[tuple[int, str]]) -> float:
        """The weight of a judgment made by these ``(annotator id, source)`` ratings: the mean source
        weight times the largest gold weight among them; 1.0 for no ratings."""
        raters = list(raters)
        if not raters:
            return 1.0
        mean_source = sum(self.source(source) for _, source in raters) / len(raters)
        return mean_source * max(self.in_mean(annotator_id) for annotator_id, _ in raters)


def rating_weights(*, project: Project) -> RatingWeights:
    """The project's :class:`RatingWeights` as of now (gold accuracy against today's gold answers)."""
    from .selectors import annotator_weights

    return RatingWeights(gold=annotator_weights(project=project), production=float(project.production_feedback_weight))
