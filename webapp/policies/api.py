"""REST API for projects and model versions (router mounted by ``webapp/api.py``).

Thin: guard, a selector or service, a schema. Projects are listed for the
token's user and created by global staff; versions and serving are staff only, as on the pages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Path, Router, Schema, Status
from ninja.errors import HttpError, ValidationError

from webapp.apikit import ERRORS, MAX_NUMBER, NO_NUL_PATTERN, SLUG_PATTERN, api_project, form_errors_raise
from webapp.errors import ApplicationError

from . import artifacts, selectors, services
from .forms import ProjectCreateForm
from .models import RUBRIC_MAX_CRITERIA, Membership, ModelVersion, Project, RatingMode, VersionExport

router = Router(tags=["projects"])

Slug = Path(..., pattern=SLUG_PATTERN)
VersionNumber = Path(..., ge=0, le=MAX_NUMBER)


class Criterion(Schema):
    model_config = {"extra": "forbid"}

    name: str = Field(..., max_length=60, pattern=NO_NUL_PATTERN)
    weight: float = 1.0
    description: str = Field("", max_length=500, pattern=NO_NUL_PATTERN)


class ProjectOut(Schema):
    slug: str
    title: str
    rating_mode: str
    role: str
    served_version: int | None
    ratings_per_item: int
    guidelines: str
    rubric: list[Criterion]


class RubricIn(Schema):
    model_config = {"extra": "forbid"}

    rubric: list[Criterion] = Field(..., max_length=RUBRIC_MAX_CRITERIA)


def project_out(project, role) -> dict:
    return {
        "slug": project.slug,
        "title": project.title,
        "rating_mode": project.rating_mode,
        "role": role,
        "served_version": project.served_version.number if project.served_version else None,
        "ratings_per_item": project.ratings_per_item,
        "guidelines": project.guidelines,
        "rubric": project.rubric or [],
    }


@router.get("/projects", response={200: list[ProjectOut], **ERRORS}, summary="Projects I am a member of")
def projects(request):
    """The projects the token's user may open, with their role in each (global staff: every project, as staff)."""
    return [project_out(p, role) for p, role in selectors.projects_for(user=request.user)]


class ProjectCreateIn(Schema):
    # ProjectCreateForm validates these (project_new): the page and the API accept the same values.
    model_config = {"extra": "forbid"}

    slug: str = Field(..., pattern=SLUG_PATTERN, description=ProjectCreateForm.base_fields["slug"].help_text)
    title: str = Field(..., min_length=1, max_length=200, pattern=NO_NUL_PATTERN)
    base_model_path: str = Field(..., min_length=1, max_length=500, pattern=NO_NUL_PATTERN,
                                 description=ProjectCreateForm.base_fields["base_model_path"].help_text)
    rating_mode: Literal[tuple(RatingMode.values)] = RatingMode.LIKERT
    guidelines: str = Field("", max_length=20_000, pattern=NO_NUL_PATTERN)
    ratings_per_item: int | None = Field(None, ge=1, le=MAX_NUMBER)
    completions_per_prompt: int | None = Field(None, ge=1, le=MAX_NUMBER)
    pool_target: int | None = Field(None, ge=1, le=MAX_NUMBER)


# Beside GET /projects on this router: a second router's "/projects" would be its own URL pattern, and
# Django would answer this POST with the first one's 405 (GET only). The operationId is the one published
# before the route moved here from the annotation app, so clients generated from the schema keep it.
@router.post("/projects", response={201: ProjectOut, **ERRORS}, summary="Create a project (global staff)",
             operation_id="webapp_annotation_api_project_create")
def project_create(request, body: ProjectCreateIn):
    """A new project on a base model folder on the server (it becomes v0, served), as "New project": the
    token's user becomes its staff. Global staff only (403 otherwise); a field the form refuses (no
    config.json in the folder, a slug taken in any letter case, rubric mode without a rubric) is a 400
    naming it; nothing is stored then."""
    if not request.user.is_staff:
        raise HttpError(403, "Only global staff create projects.")
    defaults = {name: Project._meta.get_field(name).get_default() for name in ProjectCreateForm.base_fields}
    form = ProjectCreateForm({**defaults, **body.model_dump(exclude_none=True)})
    if not form.is_valid():
        form_errors_raise(form)
    try:
        project = services.project_create_for(creator=request.user, **form.cleaned_data)
    except ApplicationError as exc:
        raise ValidationError([{"loc": ("body", "slug"), "msg": exc.message}]) from None
    return Status(201, project_out(project, Membership.Role.STAFF))



@router.get("/projects/{slug}", response={200: ProjectOut, **ERRORS}, summary="One project")
def project(request, slug: str = Slug):
    """The project as its members see it, with its rubric (the criteria rubric mode scores)."""
    project, role = api_project(request, slug)
    return project_out(project, role)


@router.put("/projects/{slug}/rubric", response={200: ProjectOut, **ERRORS}, summary="Replace the rubric (staff)")
def rubric_put(request, body: RubricIn, slug: str = Slug):
    """Replace the project's rubric: 1 to 8 criteria ``{name, weight, description}`` with unique names
    and weights from 0.01 to 1000 (an empty list clears it, unless the project is in rubric mode); audited, as on
    the setup page. Ratings already given keep the rubric they were given under. A rubric that breaks
    a rule is a 400 naming the criterion; nothing is saved."""
    project, role = api_project(request, slug, staff=True)
    try:
        project = services.project_rubric_update(
            project=project, rubric=[c.dict() for c in body.rubric], user=request.user
        )
    except ApplicationError as exc:
        raise HttpError(400, exc.message) from None
    return project_out(project, role)


class RatingStatsOut(Schema):
    n: int
    mean: float | None
    low: float | None
    high: float | None


class VersionOut(Schema):
    number: int
    kind: str
    parent: int | None
    served: bool
    created_at: datetime
    ratings_used: int
    kl_to_base: float | None
    distinct2: float | None
    identical_fraction: float | None
    held_back_reason: str
    produced_by_run: int | None
    rating: RatingStatsOut
    metrics: dict


def _version_out(version, *, served_id) -> dict:
    rating = version.rating
    return {
        "number": version.number,
        "kind": version.kind,
        "parent": version.parent.number if version.parent else None,
        "served": version.pk == served_id,
        "created_at": version.created_at,
        "ratings_used": version.ratings_used,
        "kl_to_base": version.kl_to_base,
        "distinct2": version.distinct2,
        "identical_fraction": version.identical_fraction,
        "held_back_reason": version.held_back_reason,
        "produced_by_run": version.run.pk if version.run else None,
        "rating": {"n": rating.n, "mean": rating.mean, "low": rating.low, "high": rating.high},
        "metrics": version.metrics or {},
    }


@router.get("/projects/{slug}/versions", response={200: list[VersionOut], **ERRORS}, summary="Model versions (staff)")
def versions(request, slug: str = Slug):
    """The project's versions, newest first, with the mean human rating of each (95% interval),
    KL to the base, distinct-2, why the guard held one back, and which one is served."""
    project, _ = api_project(request, slug, staff=True)
    served_id = project.served_version_id
    return [_version_out(v, served_id=served_id) for v in selectors.versions_for_project(project=project)]


class ServeIn(Schema):
    model_config = {"extra": "forbid"}

    reason: str = Field(
        ...,
        min_length=1,
        max_length=services.SERVE_REASON_MAX_CHARS,
        pattern=services.SERVE_REASON_PATTERN,
        description="Why, in a few words; kept in the audit log (required, as on the versions page).",
    )
    override_guard: bool = Field(
        False,
        description="Serve a version the promotion guard held back, or one not yet past the arena "
        "(the page's “Serve anyway”); audited with the guard's reason.",
    )


@router.post(
    "/projects/{slug}/versions/{number}/serve",
    response={200: VersionOut, **ERRORS},
    summary="Serve a version (also how to roll back; staff)",
)
def serve(request, body: ServeIn, slug: str = Slug, number: int = VersionNumber):
    """Make version ``number`` the one annotators rate next (an older one: a roll-back); audited with ``reason``.

    As "Serve this version…" on the versions page: a ``reason`` is required (400 naming it when
    missing, blank or over 500 characters); a version the promotion guard held back, or a newer one
    that has not won the arena where the project requires it, is a 409 unless ``override_guard`` is
    true; a version its run is still evaluating is a 409 whatever the body says. The pool refills
    from it after commit.
    """
    project, _ = api_project(request, slug, staff=True)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    try:
        reason = services.serve_reason_clean(body.reason)
    except ApplicationError as exc:
        raise HttpError(400, f"reason: {exc.message}") from None
    services.version_promote(
        version=version,
        user=request.user,
        override_guard=body.override_guard,
        reason=reason,
        override_hint='"override_guard": true in the request body',
    )
    served = next(v for v in selectors.versions_for_project(project=project) if v.pk == version.pk)
    return _version_out(served, served_id=version.pk)


# --- Downloading a version (the versions page's "Download") ---


class VersionExportOut(Schema):
    id: int
    version: int
    status: str = Field(description="queued, building, ready or failed.")
    error: str
    size_bytes: int | None
    created_at: datetime
    finished_at: datetime | None
    download: str | None = Field(description="Where to GET the zip once ``status`` is ready, else null.")


def _export_out(export) -> dict:
    ready = export.status == VersionExport.Status.READY
    return {
        "id": export.pk,
        "version": export.version.number,
        "status": export.status,
        "error": export.error,
        "size_bytes": export.size_bytes,
        "created_at": export.created_at,
        "finished_at": export.finished_at,
        "download": reverse("api:version_download", args=[export.version.project.slug, export.version.number])
        if ready else None,
    }


@router.post(
    "/projects/{slug}/versions/{number}/export",
    response={200: VersionExportOut, 202: VersionExportOut, **ERRORS},
    summary="Build a version's download (staff)",
)
def export_request(request, slug: str = Slug, number: int = VersionNumber):
    """Ask the training worker for version ``number`` as a zipped Hugging Face folder (LoRA merged), as
    "Download" on the versions page: 200 with ``download`` when it is built already (versions never
    change, so it is built once), else 202 with the queued build; poll ``GET`` on this path."""
    project, _ = api_project(request, slug, staff=True)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    export = services.version_export_request(version=version, user=request.user)
    return Status(200 if export.status == VersionExport.Status.READY else 202, _export_out(export))


@router.get(
    "/projects/{slug}/versions/{number}/export",
    response={200: VersionExportOut, **ERRORS},
    summary="A version's download build (staff)",
)
def export_status(request, slug: str = Slug, number: int = VersionNumber):
    """The latest download build of version ``number`` (404 when none was asked for); a failed one has its ``error``."""
    project, _ = api_project(request, slug, staff=True)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    export = selectors.latest_export(version=version)
    if export is None:
        raise HttpError(404, f"v{number} has no download build; POST to this path to ask for one.")
    return _export_out(export)


@router.get(
    "/projects/{slug}/versions/{number}/download",
    response={200: None, **ERRORS},
    summary="Download a version as a zipped Hugging Face folder (staff)",
    openapi_extra={
        "responses": {
            200: {
                "description": "The zip of the version's Hugging Face folder (config, tokenizer, safetensors).",
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            }
        }
    },
)
def version_download(request, slug: str = Slug, number: int = VersionNumber):
    """The zip of version ``number`` built by ``POST …/export``; 409 while none is ready (or its file
    is gone: ask for it again), 404 for an unknown version."""
    project, _ = api_project(request, slug, staff=True)
    version = get_object_or_404(ModelVersion, project=project, number=number)
    export = selectors.ready_export(version=version)
    handle = None
    if export is not None:
        try:
            handle = artifacts.ref_open(export.archive_path, "exports")  # FileResponse closes it
        except OSError:
            handle = None
    if handle is None:
        raise ApplicationError(f"v{number} has no built download; POST …/versions/{number}/export and poll it.")
    return FileResponse(handle, as_attachment=True, filename=f"{slug}-v{number}.zip", content_type="application/zip")
