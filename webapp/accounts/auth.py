"""Bearer-token authentication and per-token throttling for the REST API (django-ninja).

``Authorization: Bearer rl_…``: the request acts as the token's user
(``request.user``), with that user's roles; ``request.auth`` is the
:class:`~webapp.accounts.models.ApiToken`. A missing, unknown or revoked
token, or an inactive user's, is a 401. The session cookie is not accepted
by the API (no CSRF question arises: every API call names its token).
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from ninja.security import HttpBearer
from ninja.throttling import BaseThrottle

from . import selectors, services


class TokenAuth(HttpBearer):
    def authenticate(self, request, token: str):
        api_token = selectors.api_token_for_secret(secret=token)
        if api_token is None:
            return None
        services.api_token_mark_used(token=api_token)
        request.user = api_token.user
        return api_token


_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"600/m"`` -> (600 requests, 60 seconds). Periods: s, m, h, d.

    Raises:
        ValueError: not of that form.
    """
    count, _, period = rate.partition("/")
    if not count.strip().isdigit() or period.strip()[:1] not in _PERIODS:
        raise ValueError(f"an API rate looks like '600/m' (requests per s, m, h or d), not {rate!r}")
    return int(count), _PERIODS[period.strip()[0]]


def token_throttle_count(*, token) -> float | None:
    """Count one request of ``token`` against ``REWARDLOOP_API_RATE`` (e.g. ``600/m``, fixed windows).

    The one per-token throttle: the REST API (:class:`TokenRateThrottle`), the web app's
    ``/v1/models`` and the inference process (every generation request, direct or forwarded by
    ``/v1/``) all count here, each request once (:func:`webapp.serving.access.throttle_check`). Counted in Django's cache with ``add`` +
    ``incr`` (atomic in Redis), so with ``REWARDLOOP_CACHE_URL`` every process that shares that
    Redis (web processes and the inference process) shares one count per token; with the default
    per-process memory cache each process counts on its own.

    Returns:
        None when the request is within the rate, else the seconds until the window ends (> 0).
    """
    limit, period = parse_rate(settings.REWARDLOOP_API_RATE)
    now = time.time()
    window = int(now // period)
    key = f"api-throttle:{token.key_sha256[:32]}:{period}:{window}"  # not the id: ids can repeat
    cache.add(key, 0, timeout=period + 1)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted between add and incr: count this request as the first
        cache.set(key, 1, timeout=period + 1)
        count = 1
    return None if count <= limit else period - (now % period)


class TokenRateThrottle(BaseThrottle):
    """django-ninja's throttle over :func:`token_throttle_count`; keeps no state on the instance,
    so one instance serves concurrent requests."""

    def allow_request(self, request) -> bool:
        token = getattr(request, "auth", None)
        if token is None:
            return True
        wait = token_throttle_count(token=token)
        request._api_throttle_wait = wait
        return wait is None

    def wait(self):
        return None  # Retry-After is set by the API's handler from the request (no instance state)
