"""Who may call a served model: the one check that the web app's ``/v1/`` views and the inference
process both run (torch-free).

A caller names a Rewardloop API token (``Authorization: Bearer rl_…``, verified by
:func:`webapp.accounts.selectors.api_token_for_secret`: stored hashed, unrevoked, active user)
and a model (``slug`` or ``slug@N``), and is throttled per token like the REST API
(:func:`throttle_check`). Any member of the project may call its served version;
pinning another version is staff only (:func:`webapp.permissions.project_role_check`, the rule
of the pages and the REST API).
"""

from __future__ import annotations

import math

from webapp.accounts import selectors as token_selectors
from webapp.accounts.auth import token_throttle_count
from webapp.permissions import NotAMember, project_role_check
from webapp.policies.models import Membership, Project
from webapp.policies.selectors import projects_for


OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                      404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
                      429: "rate_limit_error"}


def openai_error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``; ``type`` from the status
    (``server_error`` for any status not in :data:`OPENAI_ERROR_TYPES`)."""
    return {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


class AccessRefused(Exception):
    """A refused call, with the HTTP status and OpenAI's error fields.

    ``status``: 401 (no, unknown or revoked token; ``code`` ``invalid_api_key``), 404 (no such
    project, or not the caller's; ``code`` ``model_not_found``, ``param`` ``model``), 403 (an
    annotator pinned a version other than the served one; ``param`` ``model``), 429 (over the
    token's rate; ``code`` ``rate_limit_exceeded``, ``retry_after`` in seconds).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after  # seconds, for a 429's Retry-After header

    def body(self) -> dict:
        return openai_error_body(self.status, self.message, param=self.param, code=self.code)


def token_for_header(header: str | None):
    """The :class:`~webapp.accounts.models.ApiToken` of an ``Authorization`` header's bearer secret.

    Raises:
        AccessRefused: 401 for a missing header, another scheme, or an unknown or revoked token.
    """
    scheme, _, secret = (header or "").partition(" ")
    token = token_selectors.api_token_for_secret(secret=secret.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        raise AccessRefused(401, "Send a valid, unrevoked Rewardloop API token: Authorization: Bearer <token>.",
                            code="invalid_api_key")
    return token


def throttle_check(*, token) -> None:
    """Count a request of ``token`` against ``REWARDLOOP_API_RATE``, the REST API's per-token rate
    and count (:func:`webapp.accounts.auth.token_throttle_count`).

    One rule for every process: a request is counted once, by the process that answers it. The
    web app counts the REST API and ``/v1/models``; generation (``/v1/completions``,
    ``/v1/chat/completions``, or a direct call) is counted by the inference process, the one place
    every generation request reaches, so the web app forwards those uncounted and relays the 429.

    Raises:
        AccessRefused: 429 over the rate, with ``retry_after`` (whole seconds, at least 1).
    """
    wait = token_throttle_count(token=token)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise AccessRefused(429, f"Too many requests for this token; retry in {seconds} s.",
                            code="rate_limit_exceeded", retry_after=seconds)


def model_project(*, user, model: str) -> Project:
    """The project ``model`` (``slug`` or ``slug@N``) names, if ``user`` may call it.

    Raises:
        AccessRefused: 404 no such project or not a member (not told apart), 403 an annotator
            pinning a version other than the served one.
    """
    slug, _, pin = model.partition("@")
    try:
        project, role = project_role_check(user=user, slug=slug, staff=False)
    except NotAMember:
        raise AccessRefused(404, f"The model {model!r} does not exist or you do not have access to it.",
                            param="model", code="model_not_found") from None
    if pin and role != Membership.Role.STAFF:  # the served version is read only for an annotator's pin
        served = project.served_version.number if project.served_version_id else None
        if not pin.isdigit() or int(pin) != served:
            raise AccessRefused(403, "Only the project's staff may call a version other than the served one.",
                                param="model")
    return project


def staff_slugs(*, user, slugs) -> set[str]:
    """The slugs among ``slugs`` of the projects ``user`` is staff of (global staff: all that exist);
    the inference process's ``/healthz`` shows those projects' loaded versions only."""
    wanted = set(slugs)
    return {project.slug for project, role in projects_for(user=user)
            if role == Membership.Role.STAFF and project.slug in wanted}
