"""The person's API tokens page: list, create (the secret shown once), revoke."""

import math
import time

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError

from . import selectors, services
from .models import ApiToken

TEMPLATE = "accounts/tokens.html"


# The new token's secret waits in the creator's session between the POST that created it and the GET
# that shows it (POST/redirect/GET): shown by that one page, then gone, so a reload creates nothing and
# shows nothing. Not shown at all after NEW_SECRET_SECONDS (a page never loaded).
NEW_SECRET_KEY = "accounts.new_token"
NEW_SECRET_SECONDS = 300


def _page(request, *, new_secret: str = "", new_token=None, error: str = "", status: int = 200):
    return render(
        request,
        TEMPLATE,
        {"tokens": selectors.api_tokens_for(user=request.user), "new_secret": new_secret, "new_token": new_token,
         "error": error},
        status=status,
    )


def _new_secret_pop(request) -> tuple[str, ApiToken | None]:
    """The secret of the token this session created last, and the token, once; ``("", None)`` when there
    is none, it is older than ``NEW_SECRET_SECONDS``, or the token is no longer the user's and active."""
    waiting = request.session.pop(NEW_SECRET_KEY, None)
    if not isinstance(waiting, dict) or time.time() - waiting.get("at", 0) > NEW_SECRET_SECONDS:
        return "", None
    token = selectors.api_tokens_for(user=request.user).filter(pk=waiting.get("id"), revoked_at__isnull=True).first()
    return (waiting.get("secret", ""), token) if token is not None else ("", None)


@never_cache
@login_required
@require_GET
def tokens(request):
    """The signed-in person's tokens (``accounts/tokens.html``): name, prefix, created, last used, revoked;
    right after :func:`token_create`, once, the new token's secret (never cached)."""
    new_secret, new_token = _new_secret_pop(request)
    return _page(request, new_secret=new_secret, new_token=new_token)


@never_cache
@login_required
@require_POST
def token_create(request):
    """Create a token named ``name``, then redirect (303) to the tokens page, which shows its secret once:
    reloading that page repeats the GET, not this POST. A refused name is the page again (400)."""
    try:
        token, secret = services.api_token_create(user=request.user, name=request.POST.get("name", ""))
    except ApplicationError as exc:
        return _page(request, error=exc.message, status=400)
    request.session[NEW_SECRET_KEY] = {"id": token.pk, "secret": secret, "at": time.time()}
    return HttpResponseRedirect(reverse("accounts:tokens"), status=303)


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
