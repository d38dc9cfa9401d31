"""Torch threads per Celery worker child: the arithmetic (a real worker: tests/e2e/test_worker_torch_threads.py)."""

import pytest

from webapp.worker_threads import torch_threads_per_child


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
