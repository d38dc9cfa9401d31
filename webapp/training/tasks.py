"""Training tasks (queue ``training``, one at a time). Thin: take ids, call a service."""

from celery import shared_task

from . import services


@shared_task(acks_late=True)
def training_run_execute(run_id: int) -> None:
    """Run a queued training run. Safe to deliver twice: a run is claimed once."""
    services.training_run_execute(run_id=run_id)


@shared_task
def training_schedule() -> int:
    """Beat entry: start runs for projects with enough new ratings."""
    return len(services.training_schedule_tick())


@shared_task(acks_late=True)
def version_samples_ensure(version_id: int) -> int:
    """Complete the held-out prompts with a version (for comparisons) and store its metrics. Idempotent."""
    from webapp.policies.models import ModelVersion

    from . import evaluation

    version = ModelVersion.objects.select_related("project").filter(pk=version_id).first()
    if version is None:
        return 0
    written = evaluation.version_samples_ensure(version=version)
    evaluation.version_evaluate(version=version)
    return written
