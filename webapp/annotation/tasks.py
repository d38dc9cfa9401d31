"""Generation tasks (queue ``generation``). Thin: take ids, call a service."""

from celery import shared_task

from webapp.policies.models import Project

from . import services


@shared_task(acks_late=True)
def pool_refill(project_id: int) -> int:
    """Top up a project's pool of unrated completions from its served version. Idempotent."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None or project.served_version_id is None:
        return 0
    return services.completion_pool_refill(project=project)


@shared_task
def pool_refill_all() -> None:
    """Beat entry: queue a refill for every project."""
    for project_id in Project.objects.values_list("pk", flat=True):
        pool_refill.delay(project_id)
