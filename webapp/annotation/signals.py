"""Annotation's receivers of lower layers' signals."""

from webapp import broker

POOL_REFILL_TASK_NAME = "webapp.annotation.tasks.pool_refill"


def pool_refill_on_version_served(sender, *, project_id: int, **kwargs) -> None:
    """Queue a pool refill (queue ``generation``) once a project serves another version (``version_served_committed``).

    Never raises for a broker problem (:func:`webapp.broker.task_send` logs it);
    the beat refill catches up.
    """
    broker.task_send(POOL_REFILL_TASK_NAME, args=[project_id], queue="generation")
