"""Writes for API tokens: create (the secret is returned once), revoke, mark used."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from webapp.errors import ApplicationError

from .models import ApiToken
from .selectors import TOKEN_PREFIX, api_token_for_form_nonce, token_sha256

MAX_ACTIVE_TOKENS = 20
NAME_MAX_CHARS = 100
LAST_USED_EVERY = timedelta(minutes=1)


class ApiTokenAlreadyCreated(ApplicationError):
    """The form with this nonce created ``token`` before; its secret was shown once and is not shown again."""

    def __init__(self, token: ApiToken):
        super().__init__(f"This form already created token {token.name!r} ({token.prefix}…); nothing new was created.")
        self.token = token


@transaction.atomic
def api_token_create(*, user, name: str, form_nonce: str | None = None) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret (shown once, stored only as sha256).

    ``form_nonce`` (the tokens page's one-time form nonce; None from the command) is stored on the
    token, unique per user: the same form posted twice, even at the same instant, creates one token,
    and the database's unique index decides which post that is. Another user's tokens are never
    consulted, so a nonce says nothing about whether someone else's token stores it.

    Raises:
        ApiTokenAlreadyCreated: ``user`` created a token with this ``form_nonce`` already (checked
            before the name and the limit, so a repeated post always gets this answer).
        ApplicationError: an empty or too long name, a NUL in it, the user has
            ``MAX_ACTIVE_TOKENS`` active tokens already, or the insert was refused by the database
            with no earlier token of this user to name (nothing was created; posting again may work).
    """
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()  # count and insert one at a time per user
    if form_nonce and (earlier := api_token_for_form_nonce(user=user, form_nonce=form_nonce)) is not None:
        raise ApiTokenAlreadyCreated(earlier)
    name = (name or "").strip()
    if not name:
        raise ApplicationError("Give the token a name, e.g. what script will use it.")
    if "\x00" in name:
        raise ApplicationError("A token's name cannot contain a NUL character.")
    if len(name) > NAME_MAX_CHARS:
        raise ApplicationError(f"A token's name is at most {NAME_MAX_CHARS} characters.")
    if ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_ACTIVE_TOKENS:
        raise ApplicationError(f"You have {MAX_ACTIVE_TOKENS} active tokens; revoke one first.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with transaction.atomic():  # a savepoint: the transaction stays usable to read the winner
            token = ApiToken.objects.create(
                user=user, name=name, prefix=secret[:10], key_sha256=token_sha256(secret), form_nonce=form_nonce or None
            )
    except IntegrityError as exc:
        # Another post of the same form inserted first (the lock above does not serialise on every
        # database, and its row may not have been visible to the check above).
        earlier = api_token_for_form_nonce(user=user, form_nonce=form_nonce) if form_nonce else None
        if earlier is None:  # not this user's form posted twice: a clear refusal, not a 500
            raise ApplicationError("The token could not be created (nothing was saved); create it again.") from exc
        raise ApiTokenAlreadyCreated(earlier) from None
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
