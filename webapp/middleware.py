"""Middleware of our own."""

from urllib.parse import quote, urlsplit

from django.conf import settings
from django.shortcuts import resolve_url
from django_htmx.http import HttpResponseClientRedirect


class HtmxLoginRedirectMiddleware:
    """An htmx request from an expired session gets a full-page redirect to the login page.

    Without this, htmx follows the login redirect and swaps the whole login page
    into the annotation card, and logging in there returns to a POST-only URL.
    The ``next`` page is the page the person was on (``HX-Current-URL``).
    Must come after ``django_htmx.middleware.HtmxMiddleware``.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        login_url = resolve_url(settings.LOGIN_URL)
        if (
            getattr(request, "htmx", False)
            and response.status_code == 302
            and urlsplit(response["Location"]).path == login_url
        ):
            page = urlsplit(request.htmx.current_url or "/").path or "/"
            return HttpResponseClientRedirect(f"{login_url}?next={quote(page)}")
        return response
