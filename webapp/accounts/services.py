"""Writes for API tokens: create (the secret is returned once), revoke, mark used."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from webapp.errors import ApplicationError

from .models import ApiToken
from .selectors import TOKEN_PREFIX, token_sha256

MAX_ACTIVE_TOKENS = 20
NAME_MAX_CHARS = 100
LAST_USED_EVERY = timedelta(minutes=1)


@transaction.atomic
def api_token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret (shown once, stored only as sha256).

    Raises:
        ApplicationError: an empty or too long name, a NUL in it, or the user has
            ``MAX_ACTIVE_TOKENS`` active tokens already.
    """
    name = (name or "").strip()
    if not name:
        raise ApplicationError("Give the token a name, e.g. what script will use it.")
    if "\x00" in name:
        raise ApplicationError("A token's name cannot contain a NUL character.")
    if len(name) > NAME_MAX_CHARS:
        raise ApplicationError(f"A token's name is at most {NAME_MAX_CHARS} characters.")
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()  # count and insert one at a time per user
    if ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_ACTIVE_TOKENS:
        raise ApplicationError(f"You have {MAX_ACTIVE_TOKENS} active tokens; revoke one first.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=secret[:10], key_sha256=token_sha256(secret))
    return token, secret


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke the token from now on (its next request is a 401); revoking twice changes nothing."""
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token


def api_token_mark_used(*, token: ApiToken, now=None) -> None:
    """Stamp ``last_used_at``, at most once per ``LAST_USED_EVERY`` (not one write per request)."""
    now = now or timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_EVERY:
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
