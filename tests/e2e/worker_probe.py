"""Tasks the worker tests load into a real worker (``--include tests.e2e.worker_probe``)."""

import os
import time
import uuid
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


@shared_task
def record_delivery(out_dir: str, index: int, pad: str = "") -> None:
    """Create an empty ``<out_dir>/<index>-<random>``: one file per time the task runs, so a duplicate shows.

    ``pad`` (ignored) makes the message big, so writing it takes a while.
    """
    Path(out_dir, f"{index}-{uuid.uuid4().hex}").touch(exist_ok=False)
