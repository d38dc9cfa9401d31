"""Reads for annotation: the pool, the queue, an annotator's progress, undo, staff figures."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Case, Count, Exists, OuterRef, Q, QuerySet, Value, When
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
        .annotate(n_ratings=Count("ratings", distinct=True))
        .filter(n_ratings__lt=project.ratings_per_item)
    )


def pool_size(*, project: Project) -> int:
    """Open completions sampled from the served version: what the pool refill keeps full.

    Pairwise items count as the two completions they are.
    """
    n = open_completions(project=project).filter(model_version_id=project.served_version_id).count()
    return 2 * n if project.rating_mode == RatingMode.PAIRWISE else n


def queue_for_annotator(*, project: Project, annotator) -> QuerySet[Completion]:
    """Items this annotator may be offered, served version first, oldest first.

    Excludes what they rated or skipped and items whose every slot is held by
    a live lease or a rating.
    """
    now = timezone.now()
    busy_slots = Count("leases", filter=Q(leases__fulfilled=True) | Q(leases__expires_at__gt=now), distinct=True)
    return (
        rateable_completions(project=project)
        .exclude(Exists(Rating.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .exclude(Exists(Skip.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .exclude(Exists(Lease.objects.filter(completion=OuterRef("pk"), annotator=annotator)))
        .annotate(busy_slots=busy_slots)
        .filter(busy_slots__lt=project.ratings_per_item)
        .annotate(
            stale=Case(When(model_version_id=project.served_version_id, then=Value(0)), default=Value(1))
        )
        .order_by("stale", "id")
    )


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


def judgments_by(*, project: Project, annotator) -> tuple[QuerySet[Rating], QuerySet[Comparison]]:
    """An annotator's single-completion ratings and pairwise decisions in a project."""
    ratings = Rating.objects.filter(completion__project=project, annotator=annotator, comparison__isnull=True)
    comparisons = Comparison.objects.filter(pair__project=project, annotator=annotator)
    return ratings, comparisons


def last_judgment(*, project: Project, annotator, now=None) -> Rating | Comparison | None:
    """The annotator's most recent judgment in the project if it is still undoable (younger than 10 minutes)."""
    since = (now or timezone.now()) - UNDO_WINDOW
    ratings, comparisons = judgments_by(project=project, annotator=annotator)
    candidates = [
        ratings.filter(created_at__gt=since).order_by("-created_at", "-id").first(),
        comparisons.filter(created_at__gt=since).order_by("-created_at", "-id").first(),
    ]
    candidates = [c for c in candidates if c is not None]
    return max(candidates, key=lambda j: (j.created_at, j.pk)) if candidates else None


def annotator_progress(*, project: Project, annotator) -> dict:
    """What the annotator sees: judgments today and in total, and the items waiting for them."""
    today = timezone.localdate()
    ratings, comparisons = judgments_by(project=project, annotator=annotator)
    return {
        "today": ratings.filter(created_at__date=today).count() + comparisons.filter(created_at__date=today).count(),
        "total": ratings.count() + comparisons.count(),
        "queue": queue_for_annotator(project=project, annotator=annotator).count(),
    }
