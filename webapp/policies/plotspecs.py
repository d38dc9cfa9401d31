"""What the version plots show: their specs (kind and data, see :mod:`.plotfiles`) and slots.

Used by the versions page (which asks for the files) and by the training worker when a
run ends (which has them drawn at once, so the page finds them ready).
"""

from __future__ import annotations

from . import plotfiles, selectors


def ratings_slot(project) -> str:
    return f"project-{project.pk}-ratings"


def kl_slot(project) -> str:
    return f"project-{project.pk}-kl"


def ratings_plot_spec(project, version_list) -> tuple[str, dict]:
    """Mean human rating per version, in creation order, with its 95% band (kind ``line_with_band``)."""
    rated = sorted((v for v in version_list if v.rating.n), key=lambda v: v.number)
    return "line_with_band", {
        "x": [v.number for v in rated],
        "y": [v.rating.mean for v in rated],
        "low": [v.rating.low if v.rating.low is not None else v.rating.mean for v in rated],
        "high": [v.rating.high if v.rating.high is not None else v.rating.mean for v in rated],
        "ticks": [f"v{v.number}\n{v.created_at:%m-%d %H:%M}" for v in rated],
        "title": "Human rating of each version's outputs, over time",
        "xlabel": "version (created)",
        "ylabel": selectors.rating_unit(project=project),
    }


def kl_plot_spec(project, version_list) -> tuple[str, dict]:
    """KL to the base per version, with the project's guard limit (kind ``bars``)."""
    ordered = sorted(version_list, key=lambda v: v.number)
    return "bars", {
        "labels": [f"v{v.number}" for v in ordered],
        "values": [v.kl_to_base for v in ordered],
        "title": "KL to the base on held-out prompts",
        "ylabel": "nats per token",
        "limit": project.guard_max_kl,
    }


def version_plots_ensure(*, project, version_list=None) -> tuple[plotfiles.PlotFile, plotfiles.PlotFile]:
    """The ratings and KL plots of ``project``'s versions; each one not drawn yet is queued for drawing.

    ``version_list``: :func:`.selectors.versions_for_project` when the caller has it already.
    """
    version_list = selectors.versions_for_project(project=project) if version_list is None else version_list
    ratings = plotfiles.plot_ensure(*ratings_plot_spec(project, version_list), slot=ratings_slot(project))
    kl = plotfiles.plot_ensure(*kl_plot_spec(project, version_list), slot=kl_slot(project))
    return ratings, kl
