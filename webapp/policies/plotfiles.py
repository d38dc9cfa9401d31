"""Plots as files: drawn once by a worker, served by the web process, which never imports matplotlib.

A plot is named by its *spec*: a kind (one drawing function of
:mod:`webapp.policies.plots`) and the plain JSON data it is drawn from. The
file is keyed by the SHA-256 of the spec, so new data (a run's next step, a
version evaluated, a new rating) is a new key and an old file is never served
for it. A request for a key with no file yet queues :func:`tasks.plot_draw`
(queue ``generation``: the training queue runs one long task at a time) and
answers a placeholder image with ``X-Plot: drawing``; pages poll until every
plot they show is ready. Files live in ``DATA_DIR/plots`` (a Django
``FileSystemStorage``), written to a temporary name and renamed, so a reader
never sees half a PNG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.http import HttpResponse

from webapp import broker

log = logging.getLogger(__name__)

KINDS = {"line_with_band": "line_with_band_png", "bars": "bars_png", "curves": "curves_png"}
STYLE_VERSION = 1  # bump when plots.py draws differently, so old files are not served again
DRAW_TASK_NAME = "webapp.policies.tasks.plot_draw"
RESEND_AFTER_S = 60  # a key asked for again after this long without a file is queued again
PLACEHOLDER = Path(__file__).with_name("plot_drawing.png")


@dataclass(frozen=True)
class PlotFile:
    key: str  # SHA-256 hex of the spec
    ready: bool  # the file exists


def _storage() -> FileSystemStorage:
    return FileSystemStorage(location=Path(settings.DATA_DIR) / "plots")


def plot_key(kind: str, data: dict) -> str:
    """SHA-256 hex of the spec ``(kind, data)`` (canonical JSON; ``data`` must be JSON-serialisable).

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; one of {sorted(KINDS)}")
    text = json.dumps([STYLE_VERSION, kind, data], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def plot_ensure(kind: str, data: dict) -> PlotFile:
    """The plot's key and whether its file exists; when it does not, queue its drawing (at most once a minute)."""
    key = plot_key(kind, data)
    storage = _storage()
    if storage.exists(f"{key}.png"):
        return PlotFile(key, True)
    marker = Path(storage.path(f"{key}.queued"))
    try:
        fresh = time.time() - marker.stat().st_mtime < RESEND_AFTER_S
    except FileNotFoundError:
        fresh = False
    if not fresh:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        if not broker.task_send(DRAW_TASK_NAME, args=[kind, data], queue="generation"):
            marker.unlink(missing_ok=True)  # try again on the next request
    return PlotFile(key, False)


def plot_response(kind: str, data: dict, *, asked_key: str = "") -> HttpResponse:
    """The plot as ``image/png``: its file when drawn (``X-Plot: ready``), else a placeholder (``X-Plot: drawing``).

    ``asked_key``: the ``v`` the page put in the image URL; when it is the
    current key the file never changes, so browsers may keep it.
    """
    plot = plot_ensure(kind, data)
    if plot.ready:
        response = HttpResponse(_storage().open(f"{plot.key}.png").read(), content_type="image/png")
        response["X-Plot"] = "ready"
        response["Cache-Control"] = "private, max-age=86400, immutable" if asked_key == plot.key else "no-store"
    else:
        response = HttpResponse(PLACEHOLDER.read_bytes(), content_type="image/png")
        response["X-Plot"] = "drawing"
        response["Cache-Control"] = "no-store"
    return response


def plot_draw(*, kind: str, data: dict) -> str:
    """Draw the spec's PNG (worker side: imports matplotlib) unless its file exists; returns the key.

    Raises:
        ValueError: an unknown kind.
    """
    key = plot_key(kind, data)
    storage = _storage()
    if storage.exists(f"{key}.png"):
        return key
    from . import plots

    png = getattr(plots, KINDS[kind])(**data)
    target = Path(storage.path(f"{key}.png"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{key}.{os.getpid()}.tmp")
    tmp.write_bytes(png)
    os.replace(tmp, target)
    Path(storage.path(f"{key}.queued")).unlink(missing_ok=True)
    return key
