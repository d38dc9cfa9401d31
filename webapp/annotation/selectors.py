"""Reads for annotation: the pool, the queue, an annotator's progress."""

from __future__ import annotations

from django.db.models import Case, Count, Exists, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone

from webapp.policies.models import Project

from .models import Completion, Lease, Rating, Skip


def open_completions(*, project: Project) -> QuerySet[Completion]:
    """Completions that still need ratings (fewer than ``ratings_per_item`` so far)."""
    return (
        Completion.objects.filter(project=project, prompt__held_out=False)
        .annotate(n_ratings=Count("ratings", distinct=True))
        .filter(n_ratings__lt=project.ratings_per_item)
    )


def pool_size(*, project: Project) -> int:
    """Open completions sampled from the served version: what the pool refill keeps full."""
    return open_completions(project=project).filter(model_version_id=project.served_version_id).count()


def queue_for_annotator(*, project: Project, annotator) -> QuerySet[Completion]:
    """Completions this annotator may be offered, served version first, oldest first.

    Excludes what they rated or skipped and items whose every slot is held by
    a live lease or a rating.
    """
    now = timezone.now()
    busy_slots = Count("leases", filter=Q(leases__fulfilled=True) | Q(leases__expires_at__gt=now), distinct=True)
    return (
        Completion.objects.filter(project=project, prompt__held_out=False)
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
        .select_related("completion__prompt", "completion__model_version")
        .order_by("id")
        .first()
    )


def new_ratings(*, project: Project) -> QuerySet[Rating]:
    """Ratings not yet used by a succeeded training run."""
    return Rating.objects.filter(completion__project=project).exclude(training_runs__status="succeeded")


def annotator_progress(*, project: Project, annotator) -> dict:
    today = timezone.localdate()
    mine = Rating.objects.filter(completion__project=project, annotator=annotator)
    return {
        "today": mine.filter(created_at__date=today).count(),
        "total": mine.count(),
        "queue": queue_for_annotator(project=project, annotator=annotator).count(),
    }
