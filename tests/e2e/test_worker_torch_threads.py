"""Torch threads per Celery worker child: what a real prefork worker's children run with (arithmetic: tests/webapp)."""

import os

import pytest

@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_each_child_of_a_real_worker_runs_its_share_of_the_cores(celery_processes, tmp_path):
    """``-c 2`` on two usable cores, asking for 2 threads each: every child runs 1 (2 × 2 would be 4 busy threads)."""
    from tests.e2e import worker_probe

    base_env = celery_processes.env
    celery_processes.env = lambda: {**base_env(), "REWARDLOOP_TORCH_THREADS": "2"}
    cores = sorted(os.sched_getaffinity(0))[:2]
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)  # the worker inherits this mask when it is started
    try:
        log = celery_processes.start(
            "worker", "worker", "-Q", "threads-probe", "-c", "2", "--purge", "-n", "probe@%h",
            "--include", "tests.e2e.worker_probe", "--loglevel", "INFO",
        )  # fmt: skip
    finally:
        os.sched_setaffinity(0, mine)
    celery_processes.wait_for_log(log, "ready.")
    out = tmp_path / "threads"
    out.mkdir()
    for _ in range(8):
        worker_probe.report_torch_threads.apply_async(args=[str(out)], queue="threads-probe")

    def reports_of_both_children():
        reports = {p.name: int(p.read_text()) for p in out.iterdir() if not p.name.startswith(".")}
        return reports if len(reports) >= 2 else None

    reports = celery_processes.wait_until(
        reports_of_both_children,
        90,
        "both children to report their torch threads",
    )

    assert len(reports) == 2
    assert sum(reports.values()) <= len(cores), reports
    assert set(reports.values()) == {max(1, len(cores) // 2)}
