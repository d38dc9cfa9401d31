"""Staff pages for model versions."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.permissions import staff_required

from . import selectors, services
from .models import ModelVersion, Project


@staff_required
@require_GET
def versions(request, slug):
    """Version history with lineage, metrics and which one is served (``policies/versions.html``)."""
    project = get_object_or_404(Project.objects.select_related("served_version"), slug=slug)
    return render(
        request, "policies/versions.html", {"project": project, "versions": selectors.versions_for_project(project=project)}
    )


@staff_required
@require_POST
def promote(request, slug, number):
    """Serve this version from now on (also how staff roll back)."""
    project = get_object_or_404(Project, slug=slug)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    services.version_promote(version=version)
    messages.success(request, f"Version {number} is now served.")
    return redirect("policies:versions", slug=slug)
