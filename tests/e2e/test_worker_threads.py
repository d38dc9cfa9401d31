"""Torch threads per Celery worker child: the arithmetic, and what a real prefork worker's children run with."""

import os

import pytest

from webapp.worker_threads import torch_threads_per_child

# --- The arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "concurrency", "pools", "requested", "expected"),
    [
        (16, 1, 1, 0, 16),  # one child alone on the machine takes every core
        (16, 4, 1, 0, 4),
        (16, 4, 2, 0, 2),  # two pools share the cores
        (2, 1, 2, 0, 1),  # the Procfile on this 2-core machine
        (2, 3, 1, 0, 1),  # more children than cores: one thread each, never zero
        (16, 2, 2, 8, 8),  # an explicit count that fits is kept
        (16, 4, 2, 8, 4),  # one that does not is capped at cores / concurrency
        (2, 2, 2, 2, 1),
    ],
)
def test_torch_threads_times_concurrency_never_exceed_the_usable_cores(cores, concurrency, pools, requested, expected):
    threads = torch_threads_per_child(usable_cores=cores, concurrency=concurrency, pools=pools, requested=requested)
    assert threads == expected
    assert threads * concurrency <= cores or threads == 1


@pytest.mark.parametrize("bad", [{"usable_cores": 0}, {"concurrency": 0}, {"pools": 0}, {"requested": -1}])
def test_impossible_counts_are_refused_with_the_values_named(bad):
    args = {"usable_cores": 4, "concurrency": 1, "pools": 1, "requested": 0, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        torch_threads_per_child(**args)


# --- A real worker -------------------------------------------------------------------


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
