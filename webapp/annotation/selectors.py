"""Reads for annotation: the pool, the queue, an annotator's progress, undo, staff figures."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Case, Count, Exists, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from webapp.policies.models import Project, RatingMode

from .models import Comparison, Completion, Lease, Pair, Rating, Skip

UNDO_WINDOW = timedelta(minutes=10)


def rateable_completions(*, project: Project) -> QuerySet[Completion]:
    """The completions that are items in this project's rating mode.

    Pairwise: the anchors (``completion_a``) of pairs; otherwise every
    completion. Held-out prompts are never items.
    """
    qs = Completion.objects.filter(project=project, prompt__held_out=False)
    if project.rating_mode == RatingMode.PAIRWISE:
        qs = qs.filter(pair_as_a__isnull=False)
    return qs


def open_completions(*, project: Project) -> QuerySet[Completion]:
    """Items that still need ratings (fewer than ``ratings_per_item`` so far)."""
    return (
        rateable_completions(project=project)
        .annotate(rating_count=Count("ratings", distinct=True))
        .filter(rating_count__lt=project.ratings_per_item)
    )


def pool_size(*, project: Project) -> int:
    """Open completions sampled from the served version: what the pool refill keeps full.

    Pairwise items count as the two completions they are.
    """
    n = open_completions(project=project).filter(model_version_id=project.served_version_id).count()
    return 2 * n if project.rating_mode == RatingMode.PAIRWISE else n


def _queue(*, project: Project, annotator, now) -> QuerySet[Completion]:
    """Items this annotator may be offered, unordered.

    ``n_ratings`` (kept by the services) lets an index skip finished items;
    the real ratings and the live or fulfilled leases are checked per
    candidate with correlated subqueries (no GROUP BY, so a LIMIT stops early).
    """
    per_item = project.ratings_per_item
    busy_slots = (
        Lease.objects.filter(completion=OuterRef("pk"))
        .filter(Q(fulfilled=True) | Q(expires_at__gt=now))
        .order_by()
        .values("completion")
        .annotate(n=Count("pk"))
        .values("n")
    )
    ratings = (
        Rating.objects.filter(completion=OuterRef("pk")).order_by().values("completion").annotate(n=Count("pk")).values("n")
    )
    return (
        rateable_completions(project=project)
        .filter(n_ratings__lt=per_item)
        .exclude(Exists(Rating.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .exclude(Exists(Skip.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .exclude(Exists(Lease.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .alias(
            busy_slots=Coalesce(Subquery(busy_slots), 0),
            rated=Coalesce(Subquery(ratings), 0),
        )
        .filter(busy_slots__lt=per_item, rated__lt=per_item)
    )


def queue_candidates(*, project: Project, annotator, limit: int = 20) -> list[Completion]:
    """The next ``limit`` items this annotator may be offered, in the order they are offered.

    Served version first, then older versions; within each, items that
    already have ratings first (finishing items before starting new ones),
    then oldest first. Excludes what the annotator rated, skipped or holds and
    items whose every slot is taken by a live lease or a rating. Each version
    group is read separately, so the read walks ``completion_queue_order`` in
    order and stops at ``limit``.
    """
    queue = _queue(project=project, annotator=annotator, now=timezone.now()).select_related("prompt", "model_version")
    if project.rating_mode == RatingMode.PAIRWISE:
        queue = queue.select_related("pair_as_a__completion_b")
    served = list(queue.filter(model_version_id=project.served_version_id).order_by("-n_ratings", "id")[:limit])
    if len(served) == limit:
        return served
    older = queue.exclude(model_version_id=project.served_version_id).order_by("-n_ratings", "id")
    return served + list(older[: limit - len(served)])


def lease_held(*, project: Project, annotator) -> Lease | None:
    """The annotator's live, unrated lease in this project, if any (a reload keeps the same item)."""
    return (
        Lease.objects.filter(
            completion__project=project, annotator=annotator, fulfilled=False, expires_at__gt=timezone.now()
        )
        .select_related("completion__prompt", "completion__model_version", "completion__pair_as_a__completion_b")
        .order_by("id")
        .first()
    )


def pair_of(completion: Completion) -> Pair | None:
    """The pair whose anchor is ``completion``, or None."""
    try:
        return completion.pair_as_a
    except Pair.DoesNotExist:
        return None


def new_ratings(*, project: Project) -> QuerySet[Rating]:
    """Ratings not yet used by a succeeded training run."""
    return Rating.objects.filter(completion__project=project).exclude(training_runs__status="succeeded")


def judgments_by(*, project: Project, annotator) -> QuerySet[Rating] | QuerySet[Comparison]:
    """An annotator's judgments in the project's rating mode: pairwise decisions, or single-completion ratings."""
    if project.rating_mode == RatingMode.PAIRWISE:
        return Comparison.objects.filter(pair__project=project, annotator=annotator)
    return Rating.objects.filter(completion__project=project, annotator=annotator, comparison__isnull=True)


def last_judgment(*, project: Project, annotator, now=None) -> Rating | Comparison | None:
    """The annotator's most recent judgment in the project if it is still undoable (younger than 10 minutes)."""
    since = (now or timezone.now()) - UNDO_WINDOW
    return (
        judgments_by(project=project, annotator=annotator)
        .filter(created_at__gt=since)
        .order_by("-created_at", "-id")
        .first()
    )


QUEUE_COUNT_CAP = 500


def annotator_progress(*, project: Project, annotator) -> dict:
    """What the annotator sees: judgments today and the items still waiting for them.

    ``queue`` counts items that need ratings and that this annotator has
    neither rated nor skipped (including the one they hold); it is exact up
    to ``QUEUE_COUNT_CAP`` (``queue_capped`` says when more wait), so a long
    queue costs a bounded read. ``can_undo``: they have a judgment younger
    than the undo window (one query with today's count).
    """
    now = timezone.localtime()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    undo_since = now - UNDO_WINDOW
    waiting = (
        rateable_completions(project=project)
        .filter(n_ratings__lt=project.ratings_per_item)
        .exclude(Exists(Rating.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .exclude(Exists(Skip.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .order_by()[: QUEUE_COUNT_CAP + 1]
        .count()
    )
    mine = judgments_by(project=project, annotator=annotator).filter(created_at__gte=min(midnight, undo_since))
    counts = mine.aggregate(
        today=Count("pk", filter=Q(created_at__gte=midnight)),
        undoable=Count("pk", filter=Q(created_at__gt=undo_since)),
    )
    return {
        "today": counts["today"],
        "queue": min(waiting, QUEUE_COUNT_CAP),
        "queue_capped": waiting > QUEUE_COUNT_CAP,
        "can_undo": counts["undoable"] > 0,
    }
