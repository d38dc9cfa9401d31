"""Signal handlers of Celery worker processes: torch threads after the fork, memory after failures.

Imported by :mod:`webapp.celery`, so every worker connects them.
"""

import gc
import logging

from celery import states
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init

log = logging.getLogger("webapp.worker_process")
_worker = None  # this process's WorkController; children inherit it through fork


@worker_init.connect
def _remember_worker(sender, **_kwargs):
    global _worker
    _worker = sender


def _pool_concurrency() -> int:
    """The worker's ``-c`` (resolved before the pool forks; the maximum under ``--autoscale``)."""
    concurrency = int(getattr(_worker, "concurrency", 0) or 1)
    return max(concurrency, int(getattr(_worker, "max_concurrency", 0) or 0))


@worker_process_init.connect
def _set_torch_threads(**_kwargs):
    from django.conf import settings

    import torch

    from webapp.worker_threads import torch_threads_per_child, usable_cores

    cores, concurrency = usable_cores(), _pool_concurrency()
    threads = torch_threads_per_child(
        usable_cores=cores,
        concurrency=concurrency,
        pools=settings.REWARDLOOP_WORKER_POOLS,
        requested=settings.REWARDLOOP_TORCH_THREADS,
    )
    torch.set_num_threads(threads)
    log.info(
        "torch threads per child: %d (concurrency %d, usable cores %d)", torch.get_num_threads(), concurrency, cores
    )


_failed_since_collect = False


@task_postrun.connect
def _note_failure(state=None, **_kwargs):
    global _failed_since_collect
    if state in (states.FAILURE, states.RETRY):
        _failed_since_collect = True


@task_prerun.connect
def _collect_after_failure(**_kwargs):
    """Free what a failed task left in reference cycles before the next task starts.

    A failure's traceback keeps the task's frames, and through them its tensors, in
    reference cycles that only Python's cyclic collector frees, and a full collection
    is rare: without this a generation child kept about 3 MiB more per failed refill
    (``bench/worker_rss.py``). Celery holds the failure until the child takes its next
    task, so that is the first moment a collection can free it. A collection costs
    tens of milliseconds; it runs only after a failure or retry.
    """
    global _failed_since_collect
    if _failed_since_collect:
        _failed_since_collect = False
        gc.collect()
