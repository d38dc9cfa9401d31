"""Setting a project up in the browser: create it (global staff), then its settings, guidelines,
prompts (upload, preview, import) and members (the project's staff). Every change is a POST, audited."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.errors import ApplicationError
from webapp.permissions import staff_required
from webapp.policies import selectors as policy_selectors
from webapp.policies import services as policy_services
from webapp.policies.forms import MemberAddForm, ProjectCreateForm
from webapp.policies.models import Membership, RatingMode, rubric_check
from webapp.policies.views import project_settings_form_save

from . import services
from .forms import SETUP_FIELDS, ProjectSettingsForm, PromptFileForm, RubricForm
from .markdown import guidelines_html

TEMPLATE = "annotation/setup.html"


@login_required
@require_http_methods(["GET", "POST"])
def project_new(request):
    """A new project (``annotation/project_new.html``), for global staff: slug, title, base model folder,
    rating mode, guidelines, and in rubric mode the rubric (the setup page's rubric rows: a project can be
    created in rubric mode at once). The creator becomes its staff; then its setup page."""
    if not request.user.is_staff:
        raise PermissionDenied("Only global staff create projects.")
    rubric_form = RubricForm(request.POST or None)
    rubric = []
    wants_rubric = request.method == "POST" and request.POST.get("rating_mode") == RatingMode.RUBRIC
    if wants_rubric and rubric_form.is_valid():
        try:
            rubric = rubric_check(rubric_form.rubric() or None)
        except ValidationError as exc:  # no criterion is the mode field's error (the form's RUBRIC_NEEDED)
            rubric = []
            if rubric_form.rubric():
                rubric_form.add_error(None, " ".join(exc.message_dict["rubric"]))
    form = ProjectCreateForm(request.POST or None, rubric=rubric)
    if request.method == "POST" and form.is_valid() and not (wants_rubric and rubric_form.errors):
        data = form.cleaned_data
        try:
            project = policy_services.project_create_for(
                creator=request.user, slug=data["slug"], title=data["title"], base_model_path=data["base_model_path"],
                **{k: data[k] for k in SETUP_FIELDS[1:]}, **({"rubric": rubric} if rubric else {}),
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Project {project.slug} created with its base model as v0. Now add prompts and members.")
            return redirect("setup:setup", slug=project.slug)
    status = 400 if request.method == "POST" else 200
    return render(request, "annotation/project_new.html", {"form": form, "rubric_form": rubric_form}, status=status)


def _setup_context(request, **forms) -> dict:
    project = request.project
    return {
        "project": project,
        "settings_form": forms.get("settings_form") or ProjectSettingsForm(instance=project),
        "file_form": forms.get("file_form") or PromptFileForm(),
        "member_form": forms.get("member_form") or MemberAddForm(),
        "rubric_form": forms.get("rubric_form") or RubricForm(rubric=project.rubric),
        "guidelines_preview": guidelines_html(project.guidelines),
        "members": policy_selectors.project_members(project=project),
        "n_prompts": project.prompts.count(),
        "n_held_out": project.prompts.filter(held_out=True).count(),
        "preview": forms.get("preview"),
        "upload_name": forms.get("upload_name", ""),
    }


@staff_required
@require_GET
def setup(request, slug):
    """The project's setup page (``annotation/setup.html``): settings and guidelines (with the
    guidelines rendered as annotators see them), the rubric, prompt import, members."""
    return render(request, TEMPLATE, _setup_context(request))


@staff_required
@require_POST
def settings_update(request, slug):
    """Save title, rating mode, guidelines (Markdown), ratings per item, completions per prompt, pool size."""
    form = ProjectSettingsForm(request.POST, instance=type(request.project).objects.get(pk=request.project.pk))
    refused = project_settings_form_save(
        request, form, project=request.project, update=policy_services.project_setup_update, fields=SETUP_FIELDS,
        saved="Project settings saved.",
        invalid_page=lambda form: render(request, TEMPLATE, _setup_context(request, settings_form=form), status=400),
    )
    return refused or redirect("setup:setup", slug=slug)


@staff_required
@require_POST
def rubric_update(request, slug):
    """Save the rubric (``policies.services.project_rubric_update``: unique names, weights from 0.01 to 1000;
    audited). Ratings already given keep the rubric they were given under. A refused rubric is
    shown again as typed, with the reason (400)."""
    form = RubricForm(request.POST, rubric=request.project.rubric)
    error = "Nothing was saved: check the fields marked below." if not form.is_valid() else ""
    if not error:
        try:
            policy_services.project_rubric_update(project=request.project, rubric=form.rubric(), user=request.user)
        except ApplicationError as exc:
            error = f"The rubric was not saved: {exc.message}"
    if error:
        messages.error(request, error)
        return render(request, TEMPLATE, _setup_context(request, rubric_form=form), status=400)
    messages.success(request, "Rubric saved. Ratings given before keep the rubric they were given under.")
    return redirect("setup:setup", slug=slug)


@staff_required
@require_POST
def prompts_preview(request, slug):
    """Keep the uploaded file and show its first rows, counts and errors; nothing is imported yet.
    A file with bad lines is not kept (it cannot be imported)."""
    form = PromptFileForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Nothing was previewed: check the file marked below.")
        return render(request, TEMPLATE, _setup_context(request, file_form=form), status=400)
    name = services.prompt_upload_store(upload=form.cleaned_data["file"])
    preview = services.prompt_file_preview(path=services.prompt_upload_path(name=name))
    preview["filename"] = form.cleaned_data["file"].name
    if preview["errors"]:  # no import is offered: the file would only fill the disk
        services.prompt_upload_discard(name=name)
    return render(
        request, TEMPLATE, _setup_context(request, preview=preview, upload_name="" if preview["errors"] else name),
        status=400 if preview["errors"] else 200,
    )


@staff_required
@require_POST
def prompts_import(request, slug):
    """Import the previewed upload (whole or not at all); audited."""
    try:
        result = services.prompt_upload_import(project=request.project, name=request.POST.get("upload", ""), user=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request, f"Imported {result.created} prompts"
            + (f" ({result.duplicates} already in the project, skipped). " if result.duplicates else ". ")
            + result.fields_read_sentence()
        )
    return redirect("setup:setup", slug=slug)


@staff_required
@require_POST
def member_add(request, slug):
    """Add a member by username (or change their role); audited. A refusal of the form or of the
    service (an inactive newcomer, the project's last staff member demoted) is the form's error (400)."""
    form = MemberAddForm(request.POST)
    if form.is_valid():
        try:
            policy_services.membership_add(
                project=request.project, user=form.user, role=form.cleaned_data["role"], actor=request.user
            )
        except ApplicationError as exc:
            form.add_error(None, exc.message)
    if not form.is_valid():
        messages.error(request, "Nobody was added or changed: check the form below.")
        return render(request, TEMPLATE, _setup_context(request, member_form=form), status=400)
    messages.success(request, f"{form.user.username} is now {form.cleaned_data['role']} of {request.project.slug}.")
    return _setup_or_home(request, slug)


@staff_required
@require_POST
def member_remove(request, slug):
    """Take a member off the project (their ratings stay; their leases go back to the queue); audited.
    Staff may remove themselves while another active staff member remains (then the home page). A refusal
    (the project's last staff member) is the page again with the reason (400)."""
    membership = policy_selectors.project_member(project=request.project, username=request.POST.get("username", ""))
    if membership is None:
        messages.error(request, "That person is not a member.")
        return redirect("setup:setup", slug=slug)
    try:
        policy_services.membership_remove(project=request.project, user=membership.user, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return render(request, TEMPLATE, _setup_context(request), status=400)
    messages.success(request, f"{membership.user.username} was removed from {request.project.slug}.")
    return _setup_or_home(request, slug)


def _setup_or_home(request, slug):
    """The setup page again, or the home page when the change took the person's own right to manage the
    project (they demoted or removed themselves and are not global staff)."""
    _, role = policy_selectors.project_access(project_slug=request.project.slug, user=request.user)
    if role == Membership.Role.STAFF:
        return redirect("setup:setup", slug=slug)
    return redirect("home")
