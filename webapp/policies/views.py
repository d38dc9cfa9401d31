"""Staff pages for model versions: history, promotion, plots, export, audit log.

Every view is staff-only (403 for annotators); every change is a POST.
"""

from django.contrib import messages
from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError
from webapp.permissions import staff_required

from . import artifacts, plotfiles, plotspecs, selectors, services
from .models import ModelVersion, Project, VersionExport

FIX_FIELDS_BELOW = "Nothing was saved: check the fields marked below."


def project_settings_form_save(
    request, form, *, project: Project, update, fields, saved: str, invalid_page, invalid: str = FIX_FIELDS_BELOW
) -> HttpResponse | None:
    """Save a bound settings ``form`` of ``project`` through ``update`` (one of the
    ``services.project_*_settings_update`` / ``project_setup_update`` services, audited), called with
    ``project``, the request's user and the form's cleaned ``fields``.

    Returns:
        ``invalid_page(form)`` (the page with each error next to its field, status 400) for an invalid
        form, with ``invalid`` as the message; else None, after a flash message (``saved``, or the
        service's refusal): the caller redirects.
    """
    if not form.is_valid():
        messages.error(request, invalid)
        return invalid_page(form)
    try:
        update(project=project, user=request.user, **{k: form.cleaned_data[k] for k in fields})
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, saved)
    return None


@staff_required
@require_GET
def versions(request, slug):
    """Version history (``policies/versions.html``): lineage, the run that made each, ratings used,
    mean human rating with a 95% interval, KL to the base, distinct-2, why the guard held one back,
    which one is served, what a newer one waits for (the arena's votes so far / needed); promote,
    export and compare forms; the version plots."""
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
            "promotion_waits": selectors.promotion_waits(project=project, versions=version_list),
            **_plots_context(project, version_list),
        },
    )


@staff_required
@require_GET
def plots_partial(request, slug):
    """The ``plots`` partial of ``policies/versions.html`` (the two images, polling while either is
    still being drawn); any other request than an htmx swap is redirected to the versions page."""
    if not request.htmx or request.htmx.history_restore_request:
        return redirect("policies:versions", slug=slug)
    project = get_object_or_404(Project, slug=slug)
    version_list = selectors.versions_for_project(project=project)
    return render(request, "policies/versions.html#plots", {"project": project, **_plots_context(project, version_list)})


def _plots_context(project, version_list) -> dict:
    ratings, kl = plotspecs.version_plots_ensure(project=project, version_list=version_list)
    return {"ratings_plot": ratings, "kl_plot": kl, "plots_drawing": not (ratings.ready and kl.ready)}


@staff_required
@require_POST
def promote(request, slug, number):
    """Serve this version from now on (also how staff roll back), in one confirmed POST; audited with the reason.

    The form must carry ``confirm=1`` and a ``reason`` (kept in the audit log); without
    either nothing changes and a message says what is missing. Refused with a message while
    the version's run is still evaluating it, for a version the promotion guard held back
    and for a newer version that has not won the arena (where the project requires it),
    unless the form says ``override_guard=1`` ("Serve anyway").
    """
    project = get_object_or_404(Project, slug=slug)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    if request.POST.get("confirm") != "1":
        messages.error(
            request,
            f"Nothing changed: to serve v{number}, open “Serve this version…”, say why in a few words "
            "and press the confirm button.",
        )
        return redirect(f"{reverse('policies:versions', args=[slug])}#version-{number}")
    try:
        reason = services.serve_reason_clean(request.POST.get("reason", ""))
    except ApplicationError as exc:
        messages.error(request, f"Nothing changed: to serve v{number}, {exc.message}")
        return redirect(f"{reverse('policies:versions', args=[slug])}#version-{number}")
    try:
        services.version_promote(
            version=version,
            user=request.user,
            override_guard=request.POST.get("override_guard") == "1",
            reason=reason,
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Version {number} is now served; new completions come from it.")
    return redirect("policies:versions", slug=slug)


@staff_required
@require_GET
def ratings_plot(request, slug):
    """PNG: mean human rating per version, in creation order, with its 95% band (drawn by a worker;
    a placeholder until then, see :mod:`webapp.policies.plotfiles`)."""
    project = get_object_or_404(Project, slug=slug)
    spec = plotspecs.ratings_plot_spec(project, selectors.versions_for_project(project=project))
    return plotfiles.plot_response(*spec, slot=plotspecs.ratings_slot(project), asked_key=request.GET.get("v", ""))


@staff_required
@require_GET
def kl_plot(request, slug):
    """PNG: KL to the base per version, with the project's guard limit (drawn by a worker)."""
    project = get_object_or_404(Project, slug=slug)
    spec = plotspecs.kl_plot_spec(project, selectors.versions_for_project(project=project))
    return plotfiles.plot_response(*spec, slot=plotspecs.kl_slot(project), asked_key=request.GET.get("v", ""))


@staff_required
@require_POST
def export(request, slug, number):
    """Ask the training worker for the version as a zipped Hugging Face folder (LoRA merged).

    Redirects to the download when it is ready already, otherwise back to the versions
    page, where the version's row shows the build and then its download link.
    """
    project = get_object_or_404(Project, slug=slug)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    export = services.version_export_request(version=version, user=request.user)
    if export.status == VersionExport.Status.READY:
        return redirect("policies:export_download", slug=slug, number=number, export_id=export.pk)
    messages.success(request, f"Building v{number} as a Hugging Face folder on the training worker; its download link appears in v{number}'s row.")
    return redirect(f"{reverse('policies:versions', args=[slug])}#version-{number}")


@staff_required
@require_GET
def export_status(request, slug, number):
    """The version's download cell (``policies/versions.html#export``), polled by htmx while it builds;
    any other request is redirected to the version's row on the versions page."""
    if not request.htmx or request.htmx.history_restore_request:
        return redirect(f"{reverse('policies:versions', args=[slug])}#version-{number}")
    project = get_object_or_404(Project, slug=slug)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    version.latest_export = selectors.latest_export(version=version)
    return render(request, "policies/versions.html#export", {"project": project, "v": version})


@staff_required
@require_GET
def export_download(request, slug, number, export_id):
    """Stream a ready export's zip file."""
    export = get_object_or_404(
        VersionExport.objects.select_related("version"),
        pk=export_id,
        version__project__slug=slug,
        version__number=number,
        status=VersionExport.Status.READY,
    )
    try:
        handle = artifacts.ref_open(export.archive_path, "exports")  # FileResponse closes it
    except OSError:
        messages.error(request, f"The download of v{number} is no longer on disk; press Download again to rebuild it.")
        return redirect("policies:versions", slug=slug)
    return FileResponse(handle, as_attachment=True, filename=f"{slug}-v{number}.zip", content_type="application/zip")


@staff_required
@require_GET
def audit(request, slug):
    """Who trained, cancelled, promoted, exported or changed settings, and when (``policies/audit.html``)."""
    project = get_object_or_404(Project, slug=slug)
    return render(request, "policies/audit.html", {"project": project, "events": selectors.audit_events(project=project)})
