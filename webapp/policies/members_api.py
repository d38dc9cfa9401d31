"""REST API for a project's members (router mounted by ``webapp/api.py``): the setup page's members form.

Thin, as the page: :class:`webapp.policies.forms.MemberAddForm` finds the user, ``membership_add`` and
``membership_remove`` decide (a project keeps an active staff member). The routes moved here from the
annotation app with their URLs, tag and operationIds unchanged, so the published schema and clients
generated from it stay the same.
"""

from __future__ import annotations

from typing import Literal

from ninja import Field, Path, Router, Schema, Status
from ninja.errors import HttpError

from webapp.apikit import ERRORS, NO_NUL_PATTERN, SLUG_PATTERN, api_project, form_errors_raise

from . import selectors, services
from .forms import MemberAddForm
from .models import Membership

router = Router(tags=["annotation"])  # the tag the routes were published under

Slug = Path(..., pattern=SLUG_PATTERN)
USERNAME_PATTERN = r"^[\w.@+-]{1,150}$"
Username = Path(..., pattern=USERNAME_PATTERN)
MemberRole = Literal[tuple(Membership.Role.values)]


class MemberOut(Schema):
    username: str
    role: str = Field(description="staff or annotator.")


class MemberIn(Schema):
    model_config = {"extra": "forbid"}

    username: str = Field(..., min_length=1, max_length=150, pattern=NO_NUL_PATTERN)
    role: MemberRole = Field(Membership.Role.ANNOTATOR, description="staff or annotator.")


class MemberRoleIn(Schema):
    model_config = {"extra": "forbid"}

    role: MemberRole = Field(..., description="staff or annotator.")


def _member_form(username: str, role: str) -> MemberAddForm:
    """The setup page's members form, bound and checked: a username nobody has is a 404."""
    form = MemberAddForm({"username": username, "role": role})
    if not form.is_valid() and form.has_error("username", "unknown_user"):
        raise HttpError(404, " ".join(form.errors["username"]))
    form_errors_raise(form)
    return form


def _member_out(membership) -> dict:
    return {"username": membership.user.username, "role": membership.role}


@router.get("/projects/{slug}/members", response={200: list[MemberOut], **ERRORS}, summary="Members (staff)",
            operation_id="webapp_annotation_api_members")
def members(request, slug: str = Slug):
    """The project's members with their role, in the setup page's order (annotators, then staff, each by
    username); deactivated accounts included."""
    project, _ = api_project(request, slug, staff=True)
    return [_member_out(m) for m in selectors.project_members(project=project)]


@router.post("/projects/{slug}/members", response={200: MemberOut, 201: MemberOut, **ERRORS},
             summary="Add a member (staff)", operation_id="webapp_annotation_api_member_add")
def member_add(request, body: MemberIn, slug: str = Slug):
    """Add an existing user by username with a role, as the setup page's members form (201); a member
    already is given the role (200). Audited. A username nobody has is a 404; an inactive user who is not
    a member yet, or the project's last staff member made annotator, is a 409 (``membership_add``)."""
    project, _ = api_project(request, slug, staff=True)
    form = _member_form(body.username, body.role)
    existed = selectors.project_member(project=project, username=form.user.username) is not None
    membership = services.membership_add(
        project=project, user=form.user, role=form.cleaned_data["role"], actor=request.user
    )
    return Status(200 if existed else 201, _member_out(membership))


def _membership(project, username: str) -> Membership:
    membership = selectors.project_member(project=project, username=username)
    if membership is None:
        raise HttpError(404, f"{username!r} is not a member of {project.slug}.")
    return membership


@router.patch("/projects/{slug}/members/{username}", response={200: MemberOut, **ERRORS},
              summary="Change a member's role (staff)", operation_id="webapp_annotation_api_member_role")
def member_role(request, body: MemberRoleIn, slug: str = Slug, username: str = Username):
    """Make a member staff or annotator (as adding them again on the setup page), their account active or
    not; audited. 404 for someone who is not a member; 409 for the project's last active staff member made
    annotator (make someone else staff first)."""
    project, _ = api_project(request, slug, staff=True)
    membership = _membership(project, username)
    return _member_out(services.membership_add(
        project=project, user=membership.user, role=body.role, actor=request.user
    ))


@router.delete("/projects/{slug}/members/{username}", response={204: None, **ERRORS}, summary="Remove a member (staff)",
               operation_id="webapp_annotation_api_member_remove")
def member_remove(request, slug: str = Slug, username: str = Username):
    """Take a member off the project, as the setup page: their ratings stay, their leases go back to the
    queue; audited. Staff may remove themselves while another active staff member remains; removing the
    project's last active staff member is a 409 (so a project keeps someone who can manage it); 404 for
    someone who is not a member."""
    project, _ = api_project(request, slug, staff=True)
    membership = _membership(project, username)
    services.membership_remove(project=project, user=membership.user, actor=request.user)
    return Status(204, None)
