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
