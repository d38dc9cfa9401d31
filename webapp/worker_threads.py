"""How many torch threads each Celery worker child may run.

A prefork worker with concurrency ``c`` runs ``c`` children at once; if each
starts torch's default pool (one thread per core) the machine runs ``c × cores``
busy threads and every task slows down several-fold. Each child therefore gets
``usable cores ÷ (c × pools sharing the machine)`` threads, at least one.
"""

from __future__ import annotations


def torch_threads_per_child(*, usable_cores: int, concurrency: int, pools: int = 1, requested: int = 0) -> int:
    """Torch intra-op threads for one worker child.

    Args:
        usable_cores: cores this process may use: the affinity mask capped by
            any cgroup CPU quota (:func:`usable_cores`).
        concurrency: the worker's pool size (``-c``; the maximum under autoscale).
        pools: worker pools started side by side on this machine (the Procfile
            runs two: generation and training), which share ``usable_cores``.
        requested: an explicit count (``REWARDLOOP_TORCH_THREADS``); 0 for the
            default share. It is capped so ``threads × concurrency ≤ usable_cores``.

    Returns:
        At least 1. Only when ``concurrency > usable_cores`` does the product
        exceed the cores; then each child gets one thread.

    Raises:
        ValueError: a count below its minimum (cores and concurrency below 1,
            pools below 1, requested below 0).
    """
    if usable_cores < 1 or concurrency < 1 or pools < 1 or requested < 0:
        raise ValueError(
            f"usable_cores, concurrency and pools must be >= 1 and requested >= 0; got "
            f"{usable_cores=}, {concurrency=}, {pools=}, {requested=}"
        )
    ceiling = max(1, usable_cores // concurrency)
    if requested:
        return min(requested, ceiling)
    return max(1, usable_cores // (concurrency * pools))


def usable_cores() -> int:
    """Cores this process may run on: ``os.sched_getaffinity`` capped by the cgroup CPU quota.

    Celery's own reading (``celery.utils.sysinfo.cpu_budget``, cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us``, own cgroup and its ancestors; a
    fractional quota rounds up, as joblib does).
    """
    from celery.utils.sysinfo import cpu_budget

    return cpu_budget(use_cgroup_quota=True).count
