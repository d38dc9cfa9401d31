"""Reads for API tokens."""

from __future__ import annotations

import hashlib

from django.db.models import QuerySet

from .models import ApiToken

TOKEN_PREFIX = "rl_"


def token_sha256(secret: str) -> str:
    """Hex sha256 of the token's UTF-8 bytes: what is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def api_tokens_for(*, user) -> QuerySet[ApiToken]:
    """The user's tokens, active and revoked, newest first."""
    return ApiToken.objects.filter(user=user)


def api_token_for_form_nonce(*, user, form_nonce: str) -> ApiToken | None:
    """The user's token (active or revoked) created by the tokens-page form with this nonce; None otherwise."""
    return ApiToken.objects.filter(user=user, form_nonce=form_nonce).first()


def api_token_for_secret(*, secret: str) -> ApiToken | None:
    """The active token whose secret this is, with its active user; None otherwise.

    Looked up by the secret's sha256 (unique index), so the comparison never
    touches the secret itself. One query.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    return (
        ApiToken.objects.select_related("user")
        .filter(key_sha256=token_sha256(secret), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
