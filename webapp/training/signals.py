"""Training's receivers of lower layers' signals."""

from __future__ import annotations


def version_evaluate_on_served(sender, *, project_id: int, **kwargs) -> None:
    """Queue the held-out evaluation of a newly served version that was never measured
    (``version_served_committed``): version 0 when a project starts, a rollback to an old one.

    The promotion guard compares a new version with its parent, so measuring the served
    version while annotators rate its completions takes that work out of the next training
    run ("Train now" no longer waits for its parent's evaluation). A version a run
    promoted was measured by that run, and nothing is sent. Never raises for a broker
    problem (:func:`webapp.broker.task_send` logs it); the run measures the parent then.
    """
    version_evaluate_send(project_id=project_id)


def version_evaluate_send(*, project_id: int) -> bool:
    """Send the evaluation task of the project's served version if it was never evaluated
    and the project has held-out prompts; True if a task was sent."""
    from webapp import broker
    from webapp.annotation.models import Prompt
    from webapp.policies.models import Project

    from .services import SAMPLES_TASK_NAME

    project = Project.objects.filter(pk=project_id).select_related("served_version").first()
    version = project.served_version if project else None
    if version is None or version.evaluated_at is not None:
        return False
    if not Prompt.objects.filter(project=project, held_out=True).exists():
        return False
    return broker.task_send(SAMPLES_TASK_NAME, args=[version.pk])
