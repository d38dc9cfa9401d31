"""Worker children are replaced after a number of tasks or above a memory ceiling (real prefork workers).

What a task leaves behind (a failed task's traceback, torch's allocator, heap
fragmentation) is returned to the system when its child is replaced;
``bench/worker_rss.py`` measures how much that is.
"""

import pytest
from django.conf import settings

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def pids_of_tasks(celery_processes, tmp_path, env: dict, n_tasks: int) -> list[int]:
    """Start a ``-c 1`` worker with ``env`` added, run ``n_tasks`` probes one after another; the pid of each."""
    from tests.e2e import worker_probe

    base_env = celery_processes.env
    celery_processes.env = lambda: {**base_env(), **env}
    log = celery_processes.start(
        "worker", "worker", "-Q", "recycle-probe", "-c", "1", "--purge", "-n", "recycle@%h",
        "--include", "tests.e2e.worker_probe", "--loglevel", "INFO",
    )  # fmt: skip
    celery_processes.wait_for_log(log, "ready.")
    out = tmp_path / "pids"
    out.mkdir()
    for i in range(n_tasks):
        worker_probe.report_pid.apply_async(args=[str(out), i], queue="recycle-probe")
    celery_processes.wait_until(
        lambda: len([p for p in out.iterdir() if not p.name.startswith(".")]) == n_tasks, 120, "every probe to run"
    )
    return [int((out / str(i)).read_text()) for i in range(n_tasks)]


def test_the_default_settings_recycle_children():
    assert settings.CELERY_WORKER_MAX_TASKS_PER_CHILD and settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD


def test_a_worker_child_is_replaced_after_max_tasks_per_child(celery_processes, tmp_path):
    pids = pids_of_tasks(celery_processes, tmp_path, {"REWARDLOOP_WORKER_MAX_TASKS_PER_CHILD": "2"}, n_tasks=6)

    # No child runs more than two tasks. (On a loaded machine Celery may also replace a child that
    # was slow to start, so a child can run fewer: count, do not expect an exact pattern.)
    assert max(pids.count(pid) for pid in pids) == 2, pids
    assert len(set(pids)) >= 3, pids


def test_a_worker_child_above_max_memory_is_replaced_after_its_task(celery_processes, tmp_path):
    pids = pids_of_tasks(
        celery_processes,
        tmp_path,
        {"REWARDLOOP_WORKER_MAX_TASKS_PER_CHILD": "0", "REWARDLOOP_WORKER_MAX_MEMORY_PER_CHILD_MB": "1"},
        n_tasks=3,
    )

    assert len(set(pids)) == 3, pids
