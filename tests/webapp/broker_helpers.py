"""What the web process queued on the configured broker, read back by tests."""

from __future__ import annotations

from webapp.celery import app


def queued_messages(queue: str) -> list[tuple[str, list]]:
    """Take every message off ``queue`` on the configured broker: (task name, args) each."""
    taken = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while True:
                message = simple.get(timeout=0.5)
                taken.append((message.headers.get("task"), list(message.decode()[0])))
                message.ack()
        except simple.Empty:
            pass
        finally:
            simple.close()
    return taken
