"""Reads for model versions."""

from django.db.models import Avg, Count, QuerySet

from .models import ModelVersion, Project


def versions_for_project(*, project: Project) -> QuerySet[ModelVersion]:
    """Versions, newest first, with the count and mean of human ratings of their completions."""
    return (
        ModelVersion.objects.filter(project=project)
        .select_related("parent")
        .annotate(n_ratings=Count("completions__ratings"), mean_rating=Avg("completions__ratings__score"))
        .order_by("-number")
    )
