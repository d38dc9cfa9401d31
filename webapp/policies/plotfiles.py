"""Plots as files: drawn once by a worker, served by the web process, which never imports matplotlib.

A plot is named by its *spec*: a kind (one drawing function of
:mod:`webapp.policies.plots`) and the plain JSON data it is drawn from. The
file is keyed by the SHA-256 of the spec, so new data (a run's next step, a
version evaluated, a new rating) is a new key and an old file is never served
for it. A request for a key with no file yet queues :func:`tasks.plot_draw`
(queue ``generation``: the training queue runs one long task at a time) and
answers the plot's last drawing (``X-Plot: stale``: a plot has a *slot*, such
as "run 7's curves", that remembers the last key drawn for it, so a live run's
curve never blinks out) or, for a first drawing, a placeholder image
(``X-Plot: drawing``); pages poll until every plot they show is ready. Files
not drawn again for :data:`KEEP_S` are pruned by the worker (a plot still
shown is simply drawn again on its next view). Files live in ``DATA_DIR/plots`` (a Django
``FileSystemStorage``), written by :func:`pgcore.atomic.atomic_write`, so a reader
never sees half a PNG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.http import HttpResponse

from pgcore.atomic import atomic_write
from webapp import broker

log = logging.getLogger(__name__)

KINDS = {"line_with_band": "line_with_band_png", "bars": "bars_png", "curves": "curves_png"}
STYLE_VERSION = 1  # bump when plots.py draws differently, so old files are not served again
DRAW_TASK_NAME = "webapp.policies.tasks.plot_draw"
RESEND_AFTER_S = 60  # a key asked for again after this long without a file is queued again
KEEP_S = 2 * 24 * 3600  # files older than this are pruned when the worker draws
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


def _slot_file(slot: str) -> str:
    return f"slot-{hashlib.sha256(slot.encode()).hexdigest()[:32]}.latest"


def plot_ensure(kind: str, data: dict, *, slot: str = "") -> PlotFile:
    """The plot's key and whether its file exists; when it does not, queue its drawing (at most once a minute).

    ``slot`` names the plot across data changes (e.g. ``"run-7-curves"``); the worker
    records the last key it drew for it (see :func:`plot_response`).
    """
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
        if not broker.task_send(DRAW_TASK_NAME, args=[kind, data, slot], queue="generation"):
            marker.unlink(missing_ok=True)  # try again on the next request
    return PlotFile(key, False)


def _read(storage, name: str) -> bytes | None:
    try:
        with storage.open(name) as f:
            return f.read()
    except FileNotFoundError:  # pruned or not written yet
        return None


def plot_response(kind: str, data: dict, *, slot: str = "", asked_key: str = "") -> HttpResponse:
    """The plot as ``image/png``: its file when drawn (``X-Plot: ready``); else the slot's last
    drawing (``X-Plot: stale``) or a placeholder (``X-Plot: drawing``) while a worker draws it.

    ``asked_key``: the ``v`` the page put in the image URL; when it is the
    current key the file never changes, so browsers may keep it.
    """
    plot = plot_ensure(kind, data, slot=slot)
    storage = _storage()
    png = _read(storage, f"{plot.key}.png") if plot.ready else None
    if png is not None:
        response = HttpResponse(png, content_type="image/png")
        response["X-Plot"] = "ready"
        response["Cache-Control"] = "private, max-age=86400, immutable" if asked_key == plot.key else "no-store"
        return response
    last = _read(storage, _slot_file(slot)) if slot else None
    stale = _read(storage, f"{last.decode().strip()}.png") if last else None
    if stale is not None:
        response = HttpResponse(stale, content_type="image/png")
        response["X-Plot"] = "stale"
        response["Cache-Control"] = "no-store"
    else:
        response = HttpResponse(PLACEHOLDER.read_bytes(), content_type="image/png")
        response["X-Plot"] = "drawing"
        response["Cache-Control"] = "no-store"
    return response


def plot_draw(*, kind: str, data: dict, slot: str = "") -> str:
    """Draw the spec's PNG (worker side: imports matplotlib) unless its file exists; returns the key.

    Records the key as ``slot``'s latest drawing and prunes files older than :data:`KEEP_S`.

    Raises:
        ValueError: an unknown kind.
    """
    key = plot_key(kind, data)
    storage = _storage()
    if not storage.exists(f"{key}.png"):
        from . import plots

        atomic_write(storage.path(f"{key}.png"), getattr(plots, KINDS[kind])(**data))
    if slot:
        atomic_write(storage.path(_slot_file(slot)), key.encode())
    Path(storage.path(f"{key}.queued")).unlink(missing_ok=True)
    plots_prune(older_than_s=KEEP_S)
    return key


def plots_prune(*, older_than_s: float) -> int:
    """Delete plot files (and stale markers) not written for ``older_than_s`` seconds; returns how many."""
    folder = Path(_storage().location)
    cutoff = time.time() - older_than_s
    removed = 0
    for path in folder.glob("*") if folder.is_dir() else ():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
