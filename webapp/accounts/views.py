"""The person's API tokens page: list, create (the secret shown once), revoke."""

import math
import re
import secrets

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError

from . import selectors, services
from .models import ApiToken

TEMPLATE = "accounts/tokens.html"

# The create form carries a one-time nonce (not a secret), fresh at each render and kept nowhere on the
# server: the token it creates stores it (ApiToken.form_nonce, unique), so the same form posted again (a
# reload of the page that shows a new secret, a double click) creates nothing, while a form in another
# tab keeps working. The secret itself is only ever in the creating POST's answer (never cached), never
# in the session.
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _page(request, *, new_secret: str = "", new_token=None, created_before=None, error: str = "", status: int = 200):
    return render(
        request,
        TEMPLATE,
        {"tokens": selectors.api_tokens_for(user=request.user), "new_secret": new_secret, "new_token": new_token,
         "created_before": created_before, "error": error, "nonce": secrets.token_urlsafe(16)},
        status=status,
    )


@never_cache
@login_required
@require_GET
def tokens(request):
    """The signed-in person's tokens (``accounts/tokens.html``): name, prefix, created, last used, revoked;
    the create form with a fresh one-time nonce (never cached)."""
    return _page(request)


@never_cache
@login_required
@require_POST
def token_create(request):
    """Create a token named ``name`` and answer with the page showing its secret, once (never stored, never cached).

    The form's ``nonce`` is stored on the token: the same form posted again (a reload, a second click,
    even at the same instant) creates nothing and says which token it created before, without its
    secret. A form without a well-formed nonce, or a refused name, is the page again (400).
    """
    nonce = request.POST.get("nonce", "")
    if not NONCE_PATTERN.fullmatch(nonce):
        return _page(request, error="This form is incomplete and created nothing; create the token again.", status=400)
    try:
        token, secret = services.api_token_create(
            user=request.user, name=request.POST.get("name", ""), form_nonce=nonce
        )
    except services.ApiTokenAlreadyCreated as exc:
        return _page(request, created_before=exc.token)
    except ApplicationError as exc:
        return _page(request, error=exc.message, status=400)
    return _page(request, new_secret=secret, new_token=token)


@login_required
@require_POST
def token_revoke(request, token_id):
    """Revoke one of the person's own tokens (someone else's is a 404)."""
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    services.api_token_revoke(token=token)
    messages.success(request, f"Token {token.prefix}… ({token.name}) is revoked; it opens nothing from now on.")
    return redirect("accounts:tokens")


def login_lockout(request, original_response=None, credentials=None):
    """django-axes' lockout answer (``AXES_LOCKOUT_CALLABLE``): axes' own page and status
    (``AXES_LOCKOUT_TEMPLATE``, ``AXES_HTTP_RESPONSE_CODE``, the same context as
    :func:`axes.helpers.get_lockout_response`) plus ``Retry-After``: the whole cool-off
    (``AXES_COOLOFF_TIME``) in seconds, rounded up, since every attempt during a lockout starts
    it again (axes' ``AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT``, left at its default True).
    No ``Retry-After`` when there is no cool-off (locked until an admin resets it).
    """
    from axes.conf import settings as axes_settings
    from axes.helpers import get_client_username, get_cool_off, get_cool_off_iso8601, get_failure_limit

    context = {"failure_limit": get_failure_limit(request, credentials),
               "username": get_client_username(request, credentials) or ""}
    cool_off = get_cool_off(request)
    if cool_off:
        context.update(cooloff_time=get_cool_off_iso8601(cool_off), cooloff_timedelta=cool_off)
    response = render(request, axes_settings.AXES_LOCKOUT_TEMPLATE, context, status=axes_settings.AXES_HTTP_RESPONSE_CODE)
    if cool_off:
        response["Retry-After"] = str(math.ceil(cool_off.total_seconds()))
    return response
