"""What the web process queued on the configured broker, read back by tests."""

from __future__ import annotations

from celery.utils.nodenames import anon_nodename

from webapp.celery import app


def queued_messages(queue: str) -> list[tuple[str, list]]:
    """Take every message off ``queue`` on the configured broker; return (task name, args) of those this process sent.

    Messages another process sent are taken off and left out: on Redis, a message a
    killed worker held unacknowledged (an earlier run of the suite, or the e2e tests
    that kill workers) is put back on its queue once the visibility timeout passes,
    which can be in the middle of any test. Celery stamps each message with the
    sender's ``gen<pid>@<host>`` as its ``origin``.
    """
    me = anon_nodename()
    taken = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while True:
                message = simple.get(timeout=0.5)
                if message.headers.get("origin") == me:
                    taken.append((message.headers.get("task"), list(message.decode()[0])))
                message.ack()
        except simple.Empty:
            pass
        finally:
            simple.close()
    return taken
