"""Server-side charts as PNG bytes (matplotlib's Agg backend, no pyplot state).

Each function takes plain numbers and returns PNG bytes; views serve them
with ``image/png`` (the CSP allows images from 'self').
"""

from __future__ import annotations

import io
import math

WIDTH_IN, HEIGHT_IN, DPI = 6.4, 2.8, 100


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def _label_xy(ax, *, xlabel: str, ylabel: str) -> None:
    """The axis labels, legend and grid of an x-y plot with data."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def line_with_band_png(
    *, x: list, y: list, low: list, high: list, title: str, xlabel: str, ylabel: str, ticks: list[str] | None = None
) -> bytes:
    """A line with a shaded 95% band and error bars (so a lone point shows its interval too).

    ``x`` are numbers (e.g. version numbers, in creation order); ``ticks``
    optionally labels each x. Points whose ``y`` is ``None`` are skipped; a
    missing end of an interval (``None``) is drawn at ``y``, and an end on the
    wrong side of ``y`` is drawn at ``y`` (matplotlib refuses negative error bars).
    """
    fig, ax = _figure()
    points = [
        (a, b, b if c is None else min(c, b), b if d is None else max(d, b), t)
        for a, b, c, d, t in zip(x, y, low, high, ticks or [None] * len(x))
        if b is not None
    ]
    if not points:
        _empty(ax, "no ratings yet")
    else:
        xs, ys, lows, highs, labels = zip(*points)
        ax.fill_between(xs, lows, highs, alpha=0.2, color="#2b6cb0", label="95% confidence")
        ax.errorbar(
            xs, ys, yerr=[[m - lo for m, lo in zip(ys, lows)], [hi - m for m, hi in zip(ys, highs)]],
            marker="o", color="#2b6cb0", capsize=4, label="mean",
        )
        if ticks:
            ax.set_xticks(list(xs), list(labels), fontsize=8)
        if len(xs) == 1:
            ax.set_xlim(xs[0] - 1, xs[0] + 1)
        _label_xy(ax, xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def bars_png(*, labels: list[str], values: list, title: str, ylabel: str, limit: float | None = None) -> bytes:
    """Bars per label (``None`` drawn as a gap), with an optional dashed limit line."""
    fig, ax = _figure()
    if not any(v is not None for v in values):
        _empty(ax, "no data yet")
    else:
        ax.bar(labels, [v if v is not None else 0.0 for v in values], color="#2b6cb0")
        if limit is not None:
            ax.axhline(limit, color="#c53030", linestyle="--", label=f"limit {limit:g}")
            ax.legend(loc="best", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def curves_png(*, steps: list[int], series: dict[str, list[float]], title: str, epoch_starts: list[int] = ()) -> bytes:
    """Several per-step curves on one x axis, each on its own y axis (stacked vertically)."""
    from matplotlib.figure import Figure

    n = max(1, len(series))
    fig = Figure(figsize=(WIDTH_IN, 1.6 * n + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    if not steps:
        _empty(axes[0], "no optimiser step yet")
    else:
        for ax, (name, values) in zip(axes, series.items()):
            ax.plot(steps, values, marker="." if len(steps) < 40 else None, color="#2b6cb0")
            for start in epoch_starts:
                ax.axvline(start, color="#999", linewidth=0.8, linestyle=":")
            ax.set_ylabel(name, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("optimiser step (dotted: new epoch)")
    axes[0].set_title(title, fontsize=10)
    return _png(fig)


def intervals_png(*, labels: list[str], values: list[float], low: list[float], high: list[float], title: str, xlabel: str) -> bytes:
    """One horizontal row per label: a point at its value and a bar from ``low`` to ``high`` (e.g. a 95% interval).

    Rows are drawn bottom to top in the given order, so pass the best last to have it on top.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, max(HEIGHT_IN, 0.45 * len(labels) + 1.0)), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not labels:
        _empty(ax, "no votes yet")
    else:
        ys = list(range(len(labels)))
        ax.errorbar(
            values, ys, xerr=[[v - lo for v, lo in zip(values, low)], [hi - v for v, hi in zip(values, high)]],
            fmt="o", color="#2b6cb0", capsize=4,
        )
        ax.set_yticks(ys, labels, fontsize=9)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, axis="x")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def scatter_png(*, series: dict[str, dict], title: str, xlabel: str, ylabel: str) -> bytes:
    """Points per series (``{"label": {"x": [...], "y": [...]}}``), one colour each, legend with counts."""
    fig, ax = _figure()
    if not any(s["x"] for s in series.values()):
        _empty(ax, "no rated completion with a reward-model score yet")
    else:
        for (label, points), colour in zip(series.items(), ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1")):
            if points["x"]:
                ax.scatter(points["x"], points["y"], s=14, alpha=0.6, color=colour, label=f"{label} ({len(points['x'])})")
        _label_xy(ax, xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)
