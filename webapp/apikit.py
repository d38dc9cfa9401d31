"""What every router of the REST API shares: the error shape and the project guard.

Kept apart from ``webapp/api.py`` (which imports the routers) so each app's
``api.py`` can import it without a cycle.

Every error answers one JSON shape (:class:`ErrorOut`)::

    {"code": "invalid", "message": "score: Input should be a valid integer",
     "fields": [{"field": "score", "message": "Input should be a valid integer"}]}

``code`` is one of ``invalid`` (400: a malformed request, ``fields`` names each
bad field; a refused prompt file names ``file`` once per bad line), ``rejected``
(409: well-formed, refused by a rule of the app in the present state, e.g. "You
have rated this item already"; nothing stored), ``unauthorized`` (401: no, unknown
or revoked token), ``forbidden`` (403: staff only), ``not_found`` (404: no such
object, or a project the token's user is not a member of), ``too_large``
(413), ``throttled`` (429, with ``Retry-After``).
"""

from __future__ import annotations

from typing import Annotated

from django.core.exceptions import PermissionDenied
from ninja import Field, Schema
from ninja.errors import HttpError
from pydantic import BeforeValidator

from webapp.permissions import NotAMember, project_role_check
from webapp.policies.models import Project


class FieldError(Schema):
    field: str
    message: str


class ErrorOut(Schema):
    code: str
    message: str
    fields: list[FieldError] = []


ERROR_STATUSES = frozenset({400, 401, 403, 404, 409, 413, 429})
ERRORS = {ERROR_STATUSES: ErrorOut}


def api_project(request, slug: str, *, staff: bool = False) -> tuple[Project, str]:
    """The project and the token user's role, by the same rule as the pages (:func:`project_role_check`).

    Raises:
        HttpError: 404 for a project that does not exist or that the user is not a
            member of (the API does not say which), 403 for an annotator at a staff action.
    """
    try:
        return project_role_check(user=request.user, slug=slug, staff=staff)
    except NotAMember:
        raise HttpError(404, f"No project {slug!r} that you are a member of.") from None
    except PermissionDenied as exc:
        raise HttpError(403, str(exc) or "Staff only.") from None


# Path parameters and free text, bounded so that no value reaches the database unchecked:
# a slug as the URLs allow, ids within a 64-bit key, text without NUL (PostgreSQL refuses it).
SLUG_PATTERN = r"^[-a-zA-Z0-9_]{1,50}$"
MAX_ID = 2**63 - 1
MAX_NUMBER = 2**31 - 1
NO_NUL_PATTERN = r"^[^\x00]*$"


def _a_json_number(value):
    """Refuse JSON ``true``/``false`` and strings where a number is meant (pydantic's lax mode would
    read ``true`` as 1 and ``"4"`` as 4): the API's types are JSON's own, as the /v1/ booleans."""
    if isinstance(value, bool):
        raise ValueError("Input should be a whole number, not true or false")
    if isinstance(value, str):
        raise ValueError("Input should be a whole number (a JSON number, not a string)")
    return value


# A Likert score, 1 to 5: 4 and 4.0 are 4 (JSON Schema's "integer"), true and "4" are refused. The
# validator comes after the bounds so the schema keeps them as minimum and maximum.
LikertScore = Annotated[int, Field(ge=1, le=5), BeforeValidator(_a_json_number)]
