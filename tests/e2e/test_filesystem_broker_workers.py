"""Real Celery workers on the default filesystem broker, polling every 0.1 s, while tasks are published.

Two worker processes read one queue folder while this process writes 300 messages of
256 KB to it: every task runs exactly once and neither worker stops. With kombu's own
transport (``CELERY_BROKER_TRANSPORT = "kombu.transport.filesystem:Transport"``) a worker
stops within seconds (``Unrecoverable error: JSONDecodeError``): it was handed a message
file its writer had created but not yet written (tests/webapp/test_filesystem_broker.py).
"""

import time
from collections import Counter

import pytest

from webapp.celery import app

TASKS = 300


@pytest.mark.e2e
def test_two_workers_run_every_task_published_while_they_poll_exactly_once(celery_processes, tmp_path):
    if not app.conf.broker_url.startswith("filesystem://"):
        pytest.skip("the filesystem broker's leg (CELERY_BROKER_URL=filesystem://)")
    from tests.e2e import worker_probe

    logs = [
        celery_processes.start(
            name, "worker", "-Q", "fsbroker-probe", "-P", "solo", "--purge", "-n", f"{name}@%h",
            "--include", "tests.e2e.worker_probe", "--loglevel", "INFO",
        )  # fmt: skip
        for name in ("first", "second")
    ]
    for log in logs:
        celery_processes.wait_for_log(log, "ready.")
    out = tmp_path / "runs"
    out.mkdir()

    pad = "x" * 256_000  # a big message takes a while to write: a longer window for a reader to see it half-written
    for index in range(TASKS):
        worker_probe.record_delivery.apply_async(args=[str(out), index, pad], queue="fsbroker-probe")

    def all_ran() -> bool:
        for name, proc, log in celery_processes.procs:  # a worker that stopped fails the test now, not at the timeout
            assert proc.poll() is None, f"{name} stopped:\n{log.read_text()[-3000:]}"
        return len(list(out.iterdir())) >= TASKS

    celery_processes.wait_until(all_ran, 60, f"{TASKS} tasks to run")
    succeeded = lambda: sum(log.read_text().count("succeeded") for log in logs)  # noqa: E731
    celery_processes.wait_until(lambda: succeeded() >= TASKS, 30, "the workers to log every task")
    time.sleep(1.0)  # ten polls: a message delivered twice would run by now

    runs = Counter(int(path.name.split("-")[0]) for path in out.iterdir())
    assert runs == Counter(range(TASKS)), {i: n for i, n in runs.items() if n != 1}
    for name, proc, log in celery_processes.procs:
        assert proc.poll() is None, f"{name} stopped:\n{log.read_text()[-3000:]}"
    assert all("Unrecoverable error" not in log.read_text() for log in logs)
    assert succeeded() == TASKS
