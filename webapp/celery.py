"""The Celery application.

Two queues: ``generation`` (filling the completion pool) and ``training``
(policy-gradient updates). Run one worker per queue with concurrency 1 so a
training run never competes with itself for the cores.

PyTorch and fork: a prefork worker must not start torch's thread pool in the
parent. Models are loaded lazily inside tasks (so after the fork), and the
thread count is set in ``worker_process_init``: each child gets its share of
the usable cores (affinity and cgroup quota) for the worker's real ``-c``
(:mod:`webapp.worker_threads`), so children × threads never exceeds the cores.
"""

import logging
import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# OpenMP threads that spin while waiting slow a busy machine several-fold (bench/README.md);
# this must be set before torch is first imported, which happens only inside tasks.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _make_broker_folders() -> None:
    """kombu's filesystem transport needs its folders to exist before anyone publishes."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if options.get(key):
            os.makedirs(options[key], exist_ok=True)


app.on_after_configure.connect(lambda sender, **kw: _make_broker_folders(), weak=False)


log = logging.getLogger("webapp.celery")
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
