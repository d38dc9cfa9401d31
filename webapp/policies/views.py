"""Staff pages for model versions: history, promotion, plots, export, audit log.

Every view is staff-only (403 for annotators); every change is a POST.
"""

import shutil
import tempfile
import zipfile
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError
from webapp.permissions import staff_required

from . import plots, selectors, services
from .models import ModelVersion, Project


@staff_required
@require_GET
def versions(request, slug):
    """Version history (``policies/versions.html``): lineage, the run that made each, ratings used,
    mean human rating with a 95% interval, KL to the base, distinct-2, why the guard held one back,
    which one is served; promote, export and compare forms; the version plots."""
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    version_list = selectors.versions_for_project(project=project)
    return render(
        request,
        "policies/versions.html",
        {
            "project": project,
            "versions": version_list,
            "rating_unit": selectors.rating_unit(project=project),
            "compare_default": [v.number for v in version_list[:2]],
        },
    )


@staff_required
@require_POST
def promote(request, slug, number):
    """Serve this version from now on (also how staff roll back), in one POST; audited."""
    project = get_object_or_404(Project, slug=slug)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    services.version_promote(version=version, user=request.user)
    messages.success(request, f"Version {number} is now served; new completions come from it.")
    return redirect("policies:versions", slug=slug)


def _png(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "no-store"
    return response


@staff_required
@require_GET
def ratings_plot(request, slug):
    """PNG: mean human rating per version, in creation order, with its 95% band."""
    project = get_object_or_404(Project, slug=slug)
    version_list = sorted(selectors.versions_for_project(project=project), key=lambda v: v.number)
    rated = [v for v in version_list if v.rating.n]
    return _png(
        plots.line_with_band_png(
            x=[v.number for v in rated],
            y=[v.rating.mean for v in rated],
            low=[v.rating.low if v.rating.low is not None else v.rating.mean for v in rated],
            high=[v.rating.high if v.rating.high is not None else v.rating.mean for v in rated],
            ticks=[f"v{v.number}\n{v.created_at:%m-%d %H:%M}" for v in rated],
            title="Human rating of each version's outputs, over time",
            xlabel="version (created)",
            ylabel=selectors.rating_unit(project=project),
        )
    )


@staff_required
@require_GET
def kl_plot(request, slug):
    """PNG: KL to the base per version, with the project's guard limit."""
    project = get_object_or_404(Project, slug=slug)
    version_list = sorted(selectors.versions_for_project(project=project), key=lambda v: v.number)
    return _png(
        plots.bars_png(
            labels=[f"v{v.number}" for v in version_list],
            values=[v.kl_to_base for v in version_list],
            title="KL to the base on held-out prompts",
            ylabel="nats per token",
            limit=project.guard_max_kl,
        )
    )


@staff_required
@require_POST
def export(request, slug, number):
    """Download the version as a zipped Hugging Face model folder (LoRA merged); audited.

    Built synchronously into a temporary folder under the data directory and
    streamed; the files are removed once the response is open.
    """
    project = get_object_or_404(Project, slug=slug)
    version = get_object_or_404(ModelVersion.objects.select_related("project"), project=project, number=number)
    work = Path(tempfile.mkdtemp(prefix="export-", dir=settings.DATA_DIR))
    try:
        name = f"{project.slug}-v{version.number}"
        folder = services.version_export_hf(version=version, out_dir=work / name, user=request.user)
        archive = work / f"{name}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, Path(name) / path.relative_to(folder))
        handle = archive.open("rb")
    except ApplicationError as exc:
        shutil.rmtree(work, ignore_errors=True)
        messages.error(request, exc.message)
        return redirect("policies:versions", slug=slug)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)  # POSIX: the open handle keeps the archive's data readable
    return FileResponse(handle, as_attachment=True, filename=f"{name}.zip", content_type="application/zip")


@staff_required
@require_GET
def audit(request, slug):
    """Who trained, cancelled, promoted, exported or changed settings, and when (``policies/audit.html``)."""
    project = get_object_or_404(Project, slug=slug)
    return render(request, "policies/audit.html", {"project": project, "events": selectors.audit_events(project=project)})
