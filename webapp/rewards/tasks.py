"""Reward-model tasks (queue ``training``). Thin: take ids, call a service."""

import logging

from celery import shared_task

from webapp.errors import ApplicationError

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def reward_model_fit(project_id: int) -> int | None:
    """Fit a reward-model version for the project; returns its number, or None when refused.

    Safe to deliver twice: a second delivery fits another version on the same ratings
    (same config and seed, so the same model). Too few ratings is logged, not raised.
    """
    from webapp.policies.models import Project

    from . import services

    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return None
    try:
        return services.reward_model_fit(project=project).number
    except ApplicationError as exc:
        log.warning("project %s: no reward model fitted: %s", project.slug, exc.message)
        return None
