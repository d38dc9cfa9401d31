"""A task the worker-thread test loads into a real worker (``--include tests.e2e.worker_probe``)."""

import os
import time
from pathlib import Path

from celery import shared_task


@shared_task
def report_torch_threads(out_dir: str) -> None:
    """Write ``torch.get_num_threads()`` of the child that runs this to ``<out_dir>/<pid>``."""
    import torch

    tmp = Path(out_dir, f".{os.getpid()}.tmp")
    tmp.write_text(str(torch.get_num_threads()))
    tmp.replace(Path(out_dir, str(os.getpid())))  # whole, so the test never reads half a file
    time.sleep(1.0)  # keep this child busy so the next probe goes to the other one


@shared_task
def report_pid(out_dir: str, index: int) -> None:
    """Write the pid of the child that runs this to ``<out_dir>/<index>``."""
    tmp = Path(out_dir, f".{index}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(Path(out_dir, str(index)))
