"""The Celery application.

Two queues: ``generation`` (filling the completion pool) and ``training``
(policy-gradient updates). Run one worker per queue with concurrency 1 so a
training run never competes with itself for the cores.

PyTorch and fork: a prefork worker must not start torch's thread pool in the
parent. Models are loaded lazily inside tasks (so after the fork), and the
thread count is set in ``worker_process_init``: each child gets its share of
the usable cores (affinity and cgroup quota) for the worker's real ``-c``, so
children × threads never exceeds the cores (:mod:`webapp.worker_process`).
"""

import os

from celery import Celery

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


# Worker-process signal handlers (torch threads after fork, memory after failures).
import webapp.worker_process  # noqa: E402, F401
