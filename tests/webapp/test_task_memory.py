"""What a task that failed in the middle of sampling held is freed before the worker's next task.

The traceback of a failure holds the sampler's frames and tensors in reference
cycles; Python's cyclic collector reaches them only on a rare full collection,
so without one after each failure a worker child kept about 3 MiB per failed
refill (bench/worker_rss.py: 464 -> 623 MiB over 200 refills, 50 failing).
"""

import gc
import itertools
import logging
import weakref

import pytest

from webapp.annotation import tasks
from webapp.annotation.models import Completion
from webapp.policies.runtime import policy_for_generation


@pytest.fixture
def sampler_failing_mid_batch(project, monkeypatch):
    """The real model raises on its sixth forward call; yields weak references to each forward's output.

    Counts the forwards of whichever sampling path runs: pgcore's fast decode step or the
    model's own forward (the generic path).
    """
    import pgcore.rollout

    model = policy_for_generation(project.served_version).model
    calls, outputs = itertools.count(), []

    def note(logits):
        outputs.append(weakref.ref(logits))
        if next(calls) == 5:
            raise RuntimeError("sampling failed mid-batch")

    real_forward_fast = pgcore.rollout._forward_fast

    def forward_fast(*args, **kwargs):
        logits = real_forward_fast(*args, **kwargs)
        note(logits)
        return logits

    monkeypatch.setattr(pgcore.rollout, "_forward_fast", forward_fast)
    handle = model.register_forward_hook(lambda module, args, output: note(output.logits))
    yield outputs
    handle.remove()


def test_what_a_refill_failing_mid_sampling_held_is_freed_before_the_next_task_runs(
    project, sampler_failing_mid_batch, monkeypatch
):
    # pytest keeps every log record of a test, and Celery logs the failure with its
    # traceback: a worker's handlers drop the record, so must this test.
    monkeypatch.setattr(logging.getLogger("celery.app.trace"), "disabled", True)
    gc.collect()
    gc.disable()  # no collection may happen by chance between the tasks
    try:
        result = tasks.pool_refill.apply(args=[project.pk])
        failed, error = result.failed(), str(result.result)
        del result  # an eager result keeps the exception; a worker does not
        tasks.pool_refill.apply(args=[project.pk + 1000])  # the next task (no such project: it returns at once)
        alive = [ref for ref in sampler_failing_mid_batch if ref() is not None]
    finally:
        gc.enable()

    assert failed and "sampling failed mid-batch" in error
    assert not Completion.objects.exists()
    assert len(sampler_failing_mid_batch) == 6
    assert alive == []
