"""Exporting a project's human judgments as TRL-ready JSONL.

Two formats, one JSON object per line, plain strings (TRL's "standard"
dataset format: the prompt is the prompt's text, not a rendered chat):

- ``kto`` (unpaired preference, for ``trl.KTOTrainer``): columns ``prompt``,
  ``completion``, ``label`` (bool). One row per Likert or thumbs rating:
  thumbs up → true, thumbs down → false; Likert 4–5 → true, 1–2 → false,
  3 (neutral) is left out. Pairwise decisions give one row per side: the
  winner true, the loser false; "both bad" gives two false rows; a tie gives
  none. A ranking of k gives one row per output: the upper half true, the
  lower half false, the middle one of an odd k none.
- ``pairs`` (preference pairs, for ``trl.DPOTrainer`` and
  ``trl.RewardTrainer``): columns ``prompt``, ``chosen``, ``rejected``.
  From every pairwise decision with a winner, from every pairwise comparison a
  ranking implies (k(k-1)/2 per ranking of k), and from every two completions
  of the same prompt whose mean Likert score (or thumbs-up share) differs:
  the higher one is chosen.
- ``judgments`` (every judgment as it was given, for analysis): one row per
  judgment with ``mode`` (the kind it was given in, whatever the project's mode
  is now), ``annotator``, ``prompt``, ``created_at`` and by kind:
  ``completion`` and ``score`` / ``thumbs_up`` / ``criteria`` (each
  criterion's ``name``, ``weight`` and ``score`` as given, with ``overall``,
  the weighted mean score 1–5, whose ``(overall - 3) / 2`` is the reward);
  ``a``, ``b``, ``choice``; ``order`` (the outputs' texts, best first).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from pgcore.atomic import atomic_write
from webapp.annotation import judgments
from webapp.annotation.models import Comparison, RankedPair, Rating
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, Project

FORMATS = ("kto", "pairs", "judgments")
KTO_COLUMNS = ("prompt", "completion", "label")
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def kto_rows(*, project: Project, source: str | None = None) -> list[dict]:
    """Unpaired rows ``{"prompt", "completion", "label"}`` (see the module docstring)."""
    rows = []
    ratings = (
        _by_source(Rating.objects.filter(completion__project=project, comparison__isnull=True), source)
        .select_related("completion__prompt", "ranking")
        .order_by("id")
    )
    for rating in ratings:
        if rating.ranking_id is not None:
            label = judgments.rank_kto_label(rank=rating.rank, n_ranked=len(rating.ranking.order))
        else:
            label = judgments.kto_label(score=rating.score, thumbs_up=rating.thumbs_up, criteria=rating.criteria)
        if label is None:
            continue
        rows.append({"prompt": rating.completion.prompt.text, "completion": rating.completion.text, "label": label})
    for comparison in _comparisons(project, source):
        pair = comparison.pair
        prompt = pair.completion_a.prompt.text
        labels = judgments.pairwise_kto_labels(comparison.choice)
        if labels is None:
            continue
        a, b = (pair.completion_a.text, labels[0]), (pair.completion_b.text, labels[1])
        for text, label in sorted((a, b), key=lambda side: not side[1]):  # the winner's row first
            rows.append({"prompt": prompt, "completion": text, "label": label})
    return rows


def pair_rows(*, project: Project, source: str | None = None) -> list[dict]:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` (see the module docstring)."""
    rows = []
    for comparison in _comparisons(project, source):
        pair = comparison.pair
        prompt = pair.completion_a.prompt.text
        winner = judgments.pairwise_winner(comparison.choice)
        if winner is not None:
            a, b = pair.completion_a.text, pair.completion_b.text
            chosen, rejected = (a, b) if winner == "a" else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    ranked_pairs = (
        RankedPair.objects.filter(ranking__group__project=project)
        .select_related("winner__prompt", "loser")
        .order_by("ranking_id", "id")
    )
    for ranked in ranked_pairs:
        rows.append({"prompt": ranked.winner.prompt.text, "chosen": ranked.winner.text, "rejected": ranked.loser.text})
    # Same prompt, different mean scores: the better-rated completion is chosen.
    values: dict[int, list[float]] = defaultdict(list)
    completions = {}
    ratings = (
        _by_source(
            Rating.objects.filter(completion__project=project, comparison__isnull=True, ranking__isnull=True), source
        )
        .select_related("completion__prompt")
        .order_by("id")
    )
    for rating in ratings:
        values[rating.completion_id].append(
            judgments.level(score=rating.score, thumbs_up=rating.thumbs_up, criteria=rating.criteria)
        )
        completions[rating.completion_id] = rating.completion
    by_prompt: dict[int, list[int]] = defaultdict(list)
    for completion_id in sorted(values):
        by_prompt[completions[completion_id].prompt_id].append(completion_id)
    for completion_ids in by_prompt.values():
        for first, second in combinations(completion_ids, 2):
            mean_first = sum(values[first]) / len(values[first])
            mean_second = sum(values[second]) / len(values[second])
            if mean_first == mean_second:
                continue
            chosen, rejected = (first, second) if mean_first > mean_second else (second, first)
            rows.append(
                {
                    "prompt": completions[chosen].prompt.text,
                    "chosen": completions[chosen].text,
                    "rejected": completions[rejected].text,
                }
            )
    return rows


def judgment_rows(*, project: Project, source: str | None = None) -> list[dict]:
    """One row per judgment, each in its own mode (see the module docstring)."""
    from webapp.annotation.models import Ranking

    rows = []
    singles = (
        _by_source(Rating.objects.filter(completion__project=project, comparison__isnull=True, ranking__isnull=True), source)
        .select_related("completion__prompt", "annotator")
        .order_by("id")
    )
    for r in singles:
        row = {"prompt": r.completion.prompt.text, "completion": r.completion.text}
        if r.criteria is not None:
            mode = "rubric"
            row["criteria"] = [{"name": c["name"], "weight": c["weight"], "score": c["score"]} for c in r.criteria]
            row["overall"] = round(judgments.rubric_level(r.criteria), 4)
        elif r.thumbs_up is not None:
            mode, row["thumbs_up"] = "thumbs", r.thumbs_up
        else:
            mode, row["score"] = "likert", r.score
        rows.append({"mode": mode, "annotator": r.annotator.username, "created_at": r.created_at.isoformat(), **row})
    for c in _comparisons(project, source).select_related("annotator"):
        pair = c.pair
        rows.append(
            {
                "mode": "pairwise",
                "annotator": c.annotator.username,
                "created_at": c.created_at.isoformat(),
                "prompt": pair.completion_a.prompt.text,
                "a": pair.completion_a.text,
                "b": pair.completion_b.text,
                "choice": c.choice,
            }
        )
    rankings = Ranking.objects.filter(group__project=project).select_related("group__anchor__prompt", "annotator")
    if source is not None:
        rankings = rankings.filter(pk__in=Rating.objects.filter(source=source).values("ranking_id"))
    for r in rankings.order_by("id"):
        texts = dict(Rating.objects.filter(ranking=r).values_list("completion_id", "completion__text"))
        rows.append(
            {
                "mode": "ranking",
                "annotator": r.annotator.username,
                "created_at": r.created_at.isoformat(),
                "prompt": r.group.anchor.prompt.text,
                "order": [texts[cid] for cid in r.order],
            }
        )
    return sorted(rows, key=lambda row: row["created_at"])


def _by_source(ratings, source: str | None):
    """Only ``source``'s ratings (``annotator`` or ``production``), or all for None."""
    return ratings if source is None else ratings.filter(source=source)


def _comparisons(project: Project, source: str | None = None):
    comparisons = Comparison.objects.filter(pair__project=project)
    if source is not None:
        comparisons = comparisons.filter(pk__in=Rating.objects.filter(source=source).values("comparison_id"))
    return (
        comparisons
        .select_related("pair__completion_a__prompt", "pair__completion_b")
        .order_by("id")
    )


def ratings_jsonl(*, project: Project, fmt: str, source: str | None = None) -> tuple[str, int]:
    """The export as JSONL text and its number of rows; ``source`` keeps one source's judgments only.

    Raises:
        ApplicationError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ApplicationError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if source is not None and source not in Rating.Source.values:
        raise ApplicationError(f"Unknown source {source!r}; choose one of {', '.join(Rating.Source.values)}.")
    rows = {"kto": kto_rows, "pairs": pair_rows, "judgments": judgment_rows}[fmt](project=project, source=source)
    out = io.StringIO()
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out.getvalue(), len(rows)


EMPTY_EXPORT = {
    "kto": "Nothing to export yet: no rating has a clear label (ratings of 3 out of 5 are neutral and left out).",
    "pairs": (
        "Nothing to export yet: a pair needs a pairwise choice of A or B, or two completions of one prompt "
        "rated differently."
    ),
    "judgments": "Nothing to export yet: no judgment has been given in this project.",
}


SOURCE_NAMES = {Rating.Source.ANNOTATOR: "annotators", Rating.Source.PRODUCTION: "production feedback"}


def ratings_export(
    *, project: Project, fmt: str, user=None, out_file: str | Path | None = None, refuse_empty: bool = False,
    source: str | None = None,
) -> tuple[str, int]:
    """Export the project's judgments (``fmt`` is ``kto``, ``pairs`` or ``judgments``; ``source`` keeps one
    source's); audited with the row count and the source.

    Writes ``out_file`` when given (:func:`pgcore.atomic.atomic_write`: two exports never share a temporary file).
    Returns the JSONL text and the number of rows.

    Raises:
        ApplicationError: an unknown format, or no rows while ``refuse_empty`` (nothing
            is written or audited then).
    """
    text, n = ratings_jsonl(project=project, fmt=fmt, source=source)
    if n == 0 and refuse_empty:
        if source is not None:  # the whole project may have plenty: say which source had nothing
            raise ApplicationError(f"Nothing to export yet from {SOURCE_NAMES[source]}: no judgment from that "
                                   "source gives this format a row. Choose every source to export the rest.")
        raise ApplicationError(EMPTY_EXPORT[fmt])
    if out_file is not None:
        out_file = atomic_write(out_file, text)
    policy_services.audit_record(
        project=project,
        actor=user,
        action=AuditEvent.Action.EXPORT_RATINGS,
        target=f"ratings ({fmt})",
        detail={"rows": n, **({"source": source} if source else {}), **({"file": str(out_file)} if out_file else {})},
    )
    return text, n
