"""The REST API, ``/api/v1/``: one django-ninja object composing a router per app.

Each app's ``api.py`` holds its routes and calls that app's services and
selectors; this module adds authentication (``Authorization: Bearer`` with a
per-user token, :mod:`webapp.accounts.auth`), per-token throttling, and turns
every error into the one JSON shape of :class:`webapp.apikit.ErrorOut`. The
OpenAPI 3 schema is generated at ``/api/v1/openapi.json``; interactive docs
at ``/api/v1/docs`` (Swagger UI from the installed package's static files,
no CDN).
"""

from __future__ import annotations

import math

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError

from webapp.accounts.auth import TokenAuth, TokenRateThrottle
from webapp.annotation.api import router as annotation_router
from webapp.apikit import NO_NUL_PATTERN, SLUG_PATTERN
from webapp.errors import ApplicationError, InvalidFields
from webapp.policies.api import router as policies_router
from webapp.policies.members_api import USERNAME_PATTERN
from webapp.policies.members_api import router as members_router
from webapp.policies.services import SERVE_REASON_PATTERN
from webapp.serving.api import RESPONSE_ID_PATTERN
from webapp.serving.api import router as serving_router
from webapp.training.api import router as training_router

api = NinjaAPI(
    title="Rewardloop API",
    version="1",
    description=(
        "Projects, prompt import, the annotation queue, ratings export, training runs, model versions and "
        "feedback on the served model's answers (the OpenAI-compatible routes live under `/v1/`). "
        "Authenticate with `Authorization: Bearer <token>` (create tokens under Accounts → API tokens). "
        "Every error is `{code, message, fields}`."
    ),
    auth=TokenAuth(),
    throttle=[TokenRateThrottle()],
    urls_namespace="api",
)
api.add_router("", policies_router)
api.add_router("", annotation_router)
api.add_router("", members_router)
api.add_router("", training_router)
api.add_router("", serving_router)

_CODES = {
    400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "rejected", 413: "too_large",
    429: "throttled",
}


def _error(request, status: int, message: str, *, code: str | None = None, fields: list | None = None):
    body = {"code": code or _CODES.get(status, "error"), "message": message, "fields": fields or []}
    return api.create_response(request, body, status=status)


def _field_name(loc) -> str:
    """ninja's error location, e.g. ``("body", "body", "score")``, as the field's name (``score``)."""
    parts = [str(p) for p in loc]
    source, parts = (parts[0], parts[1:]) if parts else ("body", [])
    if len(parts) > 1 and parts[0] in ("body", "query"):  # the schema's parameter, not a field of it
        parts = parts[1:]
    return ".".join(parts) or source


# What a field refused by its pattern must be, in words: pydantic's message would show the regular expression.
PATTERN_MEANINGS = {
    SLUG_PATTERN: "1 to 50 letters, digits, hyphens or underscores",
    USERNAME_PATTERN: "a username: 1 to 150 letters, digits or @ . + - _",
    NO_NUL_PATTERN: "text without NUL characters",
    SERVE_REASON_PATTERN: "a few words, not only spaces, without NUL characters",
    RESPONSE_ID_PATTERN: "an answer's id as /v1/ returned it (chatcmpl-… or cmpl-…)",
}


def _error_message(error: dict) -> str:
    """pydantic's message for one error, or what the field should be when a known pattern refused it."""
    if error.get("type") == "string_pattern_mismatch":
        meaning = PATTERN_MEANINGS.get((error.get("ctx") or {}).get("pattern"))
        if meaning:
            return f"Should be {meaning}."
    return error.get("msg", "invalid")


@api.exception_handler(ValidationError)
def _validation(request, exc: ValidationError):
    """A malformed request: 400 naming each field (ninja's default would be a 422)."""
    fields = [{"field": _field_name(e.get("loc", ())), "message": _error_message(e)} for e in exc.errors]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "Malformed request."
    return _error(request, 400, message, fields=fields)


@api.exception_handler(InvalidFields)
def _invalid_fields(request, exc: InvalidFields):
    """A service refused fields of the request by a rule of their own (e.g. a rating's field for the
    project's mode): 400 naming each, as a malformed body is; nothing was stored."""
    fields = [{"field": field, "message": message} for field, message in exc.fields]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or exc.api_message
    return _error(request, 400, message, fields=fields)


@api.exception_handler(ApplicationError)
def _rejected(request, exc: ApplicationError):
    """A rule of the app refused a well-formed request (409, the service's own message, e.g. "You have
    rated this item already", with the API's advice where the state changed); nothing was stored."""
    return _error(request, 409, exc.api_message, code="rejected")


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    response = _error(request, 401, "Send a valid, unrevoked API token: Authorization: Bearer <token>.")
    response["WWW-Authenticate"] = 'Bearer realm="rewardloop"'
    return response


@api.exception_handler(Throttled)
def _throttled(request, exc):
    wait = getattr(request, "_api_throttle_wait", None) or exc.wait or 1
    response = _error(request, 429, f"Too many requests for this token; retry in {math.ceil(wait)} s.")
    response["Retry-After"] = str(math.ceil(wait))
    return response


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    return _error(request, exc.status_code, str(exc))


@api.exception_handler(Http404)
def _not_found(request, exc):
    return _error(request, 404, "Not found.")


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc):
    return _error(request, 403, str(exc) or "Forbidden.")


@api.exception_handler(RequestDataTooBig)
def _too_large(request, exc):
    return _error(request, 413, "The request body is larger than this server accepts.")
