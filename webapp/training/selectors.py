"""Reads for the training pages."""

from django.db.models import Count, QuerySet

from webapp.annotation import selectors as annotation_selectors
from webapp.policies.models import Project

from .models import ACTIVE_STATUSES, TrainingRun


def runs_for_project(*, project: Project, limit: int = 50) -> QuerySet[TrainingRun]:
    return (
        TrainingRun.objects.filter(project=project)
        .select_related("parent_version", "result_version", "requested_by")
        .annotate(n_ratings=Count("ratings"))[:limit]
    )


def training_overview(*, project: Project) -> dict:
    return {
        "new_ratings": annotation_selectors.new_ratings(project=project).count(),
        "min_new_ratings": project.min_new_ratings,
        "active": TrainingRun.objects.filter(project=project, status__in=ACTIVE_STATUSES).exists(),
        "pool_size": annotation_selectors.pool_size(project=project),
    }
