"""View guards. Permissions are checked in the view, before any context is built.

Access is per project (``policies.Membership``): a project's annotators may
annotate it; its staff may also open its staff pages. Global staff users
(``is_staff``) are staff of every project. Anonymous users go to the login
page; signed-in people without the role get 403 (the same for a project that
does not exist, so a 403 does not tell which projects exist). The guard
leaves the project on ``request.project`` and the role on
``request.project_role``.
"""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

from webapp.policies.models import Membership, Project
from webapp.policies.selectors import project_access


class NotAMember(PermissionDenied):
    """The user may not open the project: not a member, inactive, or no such project."""


def project_role_check(*, user, slug: str, staff: bool) -> tuple[Project, str]:
    """The project named ``slug`` and the user's role in it, if that role may act; the one rule
    shared by the page guards below and the REST API.

    Raises:
        NotAMember: no such project, or the user is not a member (pages: 403; the API: 404).
        PermissionDenied: ``staff`` is asked and the user only annotates it (403).
    """
    project, role = project_access(project_slug=slug, user=user)
    if role is None:
        raise NotAMember("You are not a member of this project.")
    if staff and role != Membership.Role.STAFF:
        raise PermissionDenied("Staff only.")
    return project, role


def _project_guard(*, staff: bool, message: str):
    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            try:
                project, role = project_role_check(user=request.user, slug=kwargs["slug"], staff=staff)
            except PermissionDenied:
                raise PermissionDenied(message) from None
            request.project, request.project_role = project, role
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


member_required = _project_guard(staff=False, message="You are not a member of this project.")
member_required.__doc__ = "The view's project (``slug``) is open to its annotators and staff only."

staff_required = _project_guard(staff=True, message="Staff only.")
staff_required.__doc__ = "The view's project (``slug``) is open to its staff (and global staff) only."
