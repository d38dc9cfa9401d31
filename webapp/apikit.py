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

from typing import Annotated, Literal

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
        raise ValueError("Input should be a number, not true or false")
    if isinstance(value, str):
        raise ValueError("Input should be a JSON number, not a string")
    return value


# A Likert score, 1 to 5: 4 and 4.0 are 4 (JSON Schema's "integer"), true and "4" are refused. The
# validator comes after the bounds so the schema keeps them as minimum and maximum.
LikertScore = Annotated[int, Field(ge=1, le=5), BeforeValidator(_a_json_number)]
# A number whose bounds a Django form checks: JSON numbers only (true and "4" are refused here).
JsonFloat = Annotated[float, BeforeValidator(_a_json_number)]
JsonInt = Annotated[int, BeforeValidator(_a_json_number)]


class _ForbidExtra(Schema):
    model_config = {"extra": "forbid"}


def _form_field_type(field):
    """The JSON type of one Django form field, with its bounds and choices for the schema (the form still
    validates: these only document it and keep a value within what the database can hold)."""
    from django import forms
    from pydantic import StrictBool

    info = {"description": str(field.help_text or field.label or "")}
    if isinstance(field, forms.BooleanField):
        return StrictBool, info
    if isinstance(field, forms.ChoiceField):
        return Literal[tuple(str(value) for value, _ in field.choices)], info
    if isinstance(field, forms.FloatField):  # before IntegerField: Django's FloatField is one
        bounds = {k: v for k, v in (("ge", field.min_value), ("le", field.max_value)) if v is not None}
        return Annotated[float, Field(allow_inf_nan=False, **bounds), BeforeValidator(_a_json_number)], info
    if isinstance(field, forms.IntegerField):
        low = field.min_value if field.min_value is not None else -MAX_ID
        high = min(field.max_value, MAX_ID) if field.max_value is not None else MAX_ID
        return Annotated[int, Field(ge=low, le=high), BeforeValidator(_a_json_number)], info
    if isinstance(field, forms.CharField):
        bounds = {"max_length": field.max_length} if field.max_length else {}
        return Annotated[str, Field(pattern=NO_NUL_PATTERN, **bounds)], info
    raise TypeError(f"No JSON type for {type(field).__name__}")


def form_schemas(name: str, *form_classes) -> tuple[type[Schema], type[Schema]]:
    """Two schemas from the fields of Django ``form_classes``, named ``{name}Out`` (every field, as read)
    and ``{name}Patch`` (every field optional, nothing else accepted): the API then takes and gives exactly
    what the page's forms edit, and the forms stay the one place their rules are written.

    Booleans are JSON booleans only, numbers are never ``true``/``false``; bounds, lengths and choices
    are copied from the form fields into the OpenAPI schema.
    """
    from pydantic import create_model

    out, patch = {}, {}
    for form_class in form_classes:
        for field_name, field in form_class.base_fields.items():
            kind, info = _form_field_type(field)
            out[field_name] = (kind, Field(..., **info))
            patch[field_name] = (kind | None, Field(None, **info))
    return create_model(f"{name}Out", __base__=Schema, **out), create_model(f"{name}Patch", __base__=_ForbidExtra, **patch)


def form_errors_raise(*forms, loc: str = "body") -> None:
    """Raise the invalid ``forms``' errors as ninja's ValidationError: a 400 naming each field, as a
    malformed body is. Does nothing when every form is valid."""
    from ninja.errors import ValidationError

    errors = [
        {"loc": (loc, name), "msg": " ".join(messages)}
        for form in forms for name, messages in form.errors.items()
    ]
    if errors:
        raise ValidationError(errors)
