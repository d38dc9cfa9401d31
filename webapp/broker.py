"""Sending tasks without letting a down broker break the request that asked.

A web request (or a worker) that has already committed its write must not
answer 500 because Redis or the filesystem queue is unreachable. Every send
that a request can reach goes through :func:`task_send`, which returns whether
the message went out; the caller records what happened (a run not yet sent, a
failed export) and says so on the page, and a periodic task re-sends what
never left.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def task_send(name: str, *, args: list, queue: str | None = None) -> bool:
    """Publish task ``name`` with positional ``args``; True when the broker accepted the message.

    Never raises for a broker problem (connection refused, timeout, Redis
    error): it logs the error and returns False. How long it tries is
    ``CELERY_BROKER_CONNECTION_TIMEOUT`` and ``CELERY_TASK_PUBLISH_RETRY_POLICY``.
    ``queue`` None: the task's route from ``CELERY_TASK_ROUTES``.
    """
    from webapp.celery import app

    options = {"queue": queue} if queue else {}
    try:
        app.send_task(name, args=args, **options)
    except Exception:  # noqa: BLE001 - kombu raises OperationalError, redis-py its own; all mean "not sent"
        log.exception("could not send %s%s to the broker", name, tuple(args))
        return False
    return True
