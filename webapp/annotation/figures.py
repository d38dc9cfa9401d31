"""Reads for the staff figures page: who rated how much, how fast, and how much people agree.

Agreement is Krippendorff's alpha from the maintained ``krippendorff``
package (Castro 2017, https://github.com/pln-fing-udelar/fast-krippendorff),
computed on the items that at least two people judged: ordinal for Likert,
nominal for thumbs and for pairwise choices, ordinal for the place each
ranked output got (1 = best; the unit is the output), ordinal per rubric
criterion (every criterion ever scored in the project, by name).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from django.contrib.auth import get_user_model
from django.utils import timezone

from webapp.policies.models import Project

from . import judgments, selectors
from .judgments import CHOICE_CODES
from .models import Choice, Comparison, GoldItem, Ranking, Rating, RatingRevision, Skip


@dataclass(frozen=True)
class AnnotatorFigures:
    username: str
    judgments: int
    today: int
    median_seconds: float | None
    skips: int
    undos: int
    gold_answered: int = 0  # gold items judged
    gold_correct: int = 0  # of those, judged right
    weight: float = 1.0  # of their ratings in training (below 1: gold accuracy under the project's bar)

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_answered if self.gold_answered else None


@dataclass(frozen=True)
class Agreement:
    kind: str  # "Likert 1–5", "Thumbs", "Pairwise"
    level: str  # Krippendorff level of measurement
    alpha: float | None  # None: not enough overlap or no variation to measure
    items: int  # items judged by at least two people
    judgments: int  # judgments on those items
    note: str


SOURCES = tuple(Rating.Source.values)


def _judgments(project: Project, source: str | None):
    """The project's judgments as three querysets (single ratings, pairwise decisions, rankings), of one
    ``source`` (``annotator`` or ``production``) or of both for None."""
    single = Rating.objects.filter(completion__project=project, comparison__isnull=True, ranking__isnull=True)
    pairwise = Comparison.objects.filter(pair__project=project)
    rankings = Ranking.objects.filter(group__project=project)
    if source is not None:
        single = single.filter(source=source)
        pairwise = pairwise.filter(pk__in=Rating.objects.filter(source=source).values("comparison_id"))
        rankings = rankings.filter(pk__in=Rating.objects.filter(source=source).values("ranking_id"))
    return single, pairwise, rankings


def annotator_figures(*, project: Project, source: str | None = None) -> list[AnnotatorFigures]:
    """Per annotator: judgments (a pairwise decision or a ranking counts once; gold items included), today,
    median seconds per item, skips, undos, gold items answered and right, and the weight of their ratings
    in training (``selectors.annotator_weights``).

    ``source`` (``annotator`` or ``production``) counts only that source's judgments and lists only the
    people who gave one; skips, undos and gold answers belong to the annotation queue and are counted
    for ``annotator`` and for None (both sources).
    """
    today = timezone.localdate()
    rows: dict[int, dict] = defaultdict(lambda: {"n": 0, "today": 0, "seconds": [], "skips": 0, "undos": 0})
    single, pairwise, rankings = _judgments(project, source)
    for qs in (single, pairwise, rankings):
        for annotator_id, created_at, seconds in qs.values_list("annotator_id", "created_at", "seconds_spent"):
            row = rows[annotator_id]
            row["n"] += 1
            row["today"] += timezone.localdate(created_at) == today
            if seconds is not None:
                row["seconds"].append(seconds)
    queue = source != Rating.Source.PRODUCTION
    for annotator_id in Skip.objects.filter(completion__project=project).values_list("annotator_id", flat=True):
        if queue and (source is None or annotator_id in rows):
            rows[annotator_id]["skips"] += 1
    for annotator_id in RatingRevision.objects.filter(completion__project=project).values_list("annotator_id", flat=True):
        if queue and (source is None or annotator_id in rows):
            rows[annotator_id]["undos"] += 1
    gold = selectors.gold_accuracy(project=project) if queue else {}
    weights = selectors.annotator_weights(project=project)
    for annotator_id in gold:
        rows[annotator_id]  # noqa: B018 - someone who answered only gold items is listed too
    names = dict(get_user_model().objects.filter(pk__in=rows).values_list("pk", "username"))
    return sorted(
        (
            AnnotatorFigures(
                username=names[pk],
                judgments=row["n"],
                today=row["today"],
                median_seconds=statistics.median(row["seconds"]) if row["seconds"] else None,
                skips=row["skips"],
                undos=row["undos"],
                gold_answered=gold[pk].answered if pk in gold else 0,
                gold_correct=gold[pk].correct if pk in gold else 0,
                weight=weights.get(pk, 1.0),
            )
            for pk, row in rows.items()
        ),
        key=lambda f: (-f.judgments, f.username),
    )


@dataclass(frozen=True)
class GoldItemRow:
    completion_id: int  # the item as the queue knows it (a pair's A, a rank group's anchor)
    prompt: str
    text: str  # the completion's text
    kind: str  # "likert", "thumbs", "pairwise" or "ranking": which fields its answer has
    answer: dict
    answer_text: str  # the answer in words, e.g. "4 (± 1)", "thumbs up", "B is better", "output #12 first"
    note: str
    judged: int  # judgments of it so far
    right: int  # of those, right against today's answer
    updated_at: object


def gold_answer_kind(answer: dict) -> str:
    """Which kind of item a (clean) gold answer is for (see ``judgments.gold_answer_clean``)."""
    if "choice" in answer:
        return "pairwise"
    if "best" in answer:
        return "ranking"
    return "thumbs" if "thumbs_up" in answer else "likert"


def gold_answer_text(answer: dict) -> str:
    """A gold answer in words, as the staff page shows it."""
    kind = gold_answer_kind(answer)
    if kind == "pairwise":
        return Choice(answer["choice"]).label
    if kind == "ranking":
        return f"output #{answer['best']} first"
    if kind == "thumbs":
        return "thumbs up" if answer["thumbs_up"] else "thumbs down"
    tolerance = answer.get("tolerance", 0)
    return f"{answer['score']}" + (f" (± {tolerance})" if tolerance else "")


def gold_items(*, project: Project) -> list[GoldItemRow]:
    """The project's gold items, newest change first, each with its answer and how many of its
    judgments are right against that answer now (``selectors.gold_verdicts``)."""
    tally: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for cid, _, correct in selectors.gold_verdicts(project=project):
        tally[cid][0] += 1
        tally[cid][1] += correct
    rows = []
    for gold in GoldItem.objects.filter(project=project).select_related("completion__prompt").order_by("-updated_at", "-id"):
        judged, right = tally.get(gold.completion_id, (0, 0))
        rows.append(
            GoldItemRow(
                completion_id=gold.completion_id,
                prompt=gold.completion.prompt.text,
                text=gold.completion.text,
                kind=gold_answer_kind(gold.answer),
                answer=gold.answer,
                answer_text=gold_answer_text(gold.answer),
                note=gold.note,
                judged=judged,
                right=right,
                updated_at=gold.updated_at,
            )
        )
    return rows


def _alpha(kind: str, level: str, triples: list[tuple[int, int, float]], value_domain) -> Agreement:
    """Alpha over (unit, annotator, value) triples, keeping only units with two or more values."""
    by_unit: dict[int, dict[int, float]] = defaultdict(dict)
    for unit, annotator, value in triples:
        by_unit[unit][annotator] = value
    units = [u for u, values in by_unit.items() if len(values) >= 2]
    n_judgments = sum(len(by_unit[u]) for u in units)
    if not units:
        return Agreement(kind, level, None, 0, 0, "No item has been judged by two people yet.")
    annotators = sorted({a for u in units for a in by_unit[u]})
    data = np.full((len(annotators), len(units)), np.nan)
    row_of = {a: i for i, a in enumerate(annotators)}
    for j, unit in enumerate(units):
        for annotator, value in by_unit[unit].items():
            data[row_of[annotator], j] = value
    if len({v for u in units for v in by_unit[u].values()}) < 2:
        return Agreement(kind, level, None, len(units), n_judgments, "Every judgment has the same value: alpha is undefined.")
    import krippendorff

    alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=value_domain))
    return Agreement(kind, level, alpha, len(units), n_judgments, "")


def agreement(*, project: Project) -> list[Agreement]:
    """Krippendorff's alpha per kind of judgment the project holds (Likert, thumbs, pairwise, ranking, and each rubric criterion)."""
    ratings = Rating.objects.filter(
        completion__project=project, comparison__isnull=True, ranking__isnull=True, criteria__isnull=True
    )
    by_criterion: dict[str, list] = defaultdict(list)
    for completion_id, annotator_id, criteria in Rating.objects.filter(
        completion__project=project, criteria__isnull=False
    ).values_list("completion_id", "annotator_id", "criteria"):
        for c in criteria:
            by_criterion[c["name"]].append((completion_id, annotator_id, c["score"]))
    ranked = [
        (completion_id, annotator_id, judgments.rank_level(rank=rank))
        for completion_id, annotator_id, rank in Rating.objects.filter(
            completion__project=project, ranking__isnull=False
        ).values_list("completion_id", "annotator_id", "rank")
    ]
    likert = list(ratings.filter(score__isnull=False).values_list("completion_id", "annotator_id", "score"))
    thumbs = list(ratings.filter(thumbs_up__isnull=False).values_list("completion_id", "annotator_id", "thumbs_up"))
    pairwise = [
        (pair_id, annotator_id, CHOICE_CODES[choice])
        for pair_id, annotator_id, choice in Comparison.objects.filter(pair__project=project).values_list(
            "pair_id", "annotator_id", "choice"
        )
    ]
    result = []
    if likert or project.rating_mode == "likert":
        result.append(_alpha("Likert 1–5", "ordinal", likert, [1, 2, 3, 4, 5]))
    if thumbs or project.rating_mode == "thumbs":
        values = [(u, a, judgments.level(score=None, thumbs_up=v)) for u, a, v in thumbs]
        result.append(_alpha("Thumbs", "nominal", values, [0.0, 1.0]))
    if pairwise or project.rating_mode == "pairwise":
        result.append(_alpha("Pairwise", "nominal", pairwise, list(CHOICE_CODES.values())))
    if ranked or project.rating_mode == "ranking":
        k = max([project.rank_k, *(int(v) for _, _, v in ranked)])
        result.append(_alpha("Ranking (place of each output)", "ordinal", ranked, [float(p) for p in range(1, k + 1)]))
    names = list(by_criterion) or ([c["name"] for c in project.rubric or []] if project.rating_mode == "rubric" else [])
    for name in names:
        result.append(_alpha(f"Rubric: {name}", "ordinal", by_criterion.get(name, []), [1, 2, 3, 4, 5]))
    return result


def recent_comments(*, project: Project, limit: int = 50, source: str | None = None) -> list[dict]:
    """The latest free-text comments, newest first (shown to staff as plain text); ``source`` as in
    :func:`annotator_figures`. Each row says its source."""
    single, pairwise, rankings = _judgments(project, source)
    rows = [
        {"at": r.created_at, "annotator": r.annotator.username, "item": r.completion_id, "comment": r.comment,
         "source": r.source}
        for r in single
        .exclude(comment="")
        .select_related("annotator")
        .order_by("-created_at")[:limit]
    ]
    rows += [
        {"at": c.created_at, "annotator": c.annotator.username, "item": c.pair.completion_a_id, "comment": c.comment,
         "source": c.ratings.all()[0].source if c.ratings.all() else Rating.Source.ANNOTATOR}
        for c in pairwise.prefetch_related("ratings")
        .exclude(comment="")
        .select_related("annotator", "pair")
        .order_by("-created_at")[:limit]
    ]
    rows += [
        {"at": r.created_at, "annotator": r.annotator.username, "item": r.group.anchor_id, "comment": r.comment,
         "source": Rating.Source.ANNOTATOR}
        for r in rankings
        .exclude(comment="")
        .select_related("annotator", "group")
        .order_by("-created_at")[:limit]
    ]
    return sorted(rows, key=lambda r: r["at"], reverse=True)[:limit]
