"""Middleware of our own."""

from urllib.parse import quote, urlsplit

from django.conf import settings
from django.shortcuts import resolve_url
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect


class HtmxLoginRedirectMiddleware:
    """An htmx request from an expired session gets a full-page redirect to the login page.

    Without this, htmx follows the login redirect and swaps the whole login page
    into the annotation card, and logging in there returns to a POST-only URL.
    The ``next`` page is the page the person was on (``HX-Current-URL``). A history
    restore (Back to a page htmx no longer holds) follows the plain redirect to the
    full login page instead: htmx would swap an empty body in and ignore the header.
    Must come after ``django_htmx.middleware.HtmxMiddleware``.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        login_url = resolve_url(settings.LOGIN_URL)
        if (
            getattr(request, "htmx", False)
            and not request.htmx.history_restore_request  # htmx swaps that body in and ignores HX-Redirect
            and response.status_code == 302
            and urlsplit(response["Location"]).path == login_url
        ):
            page = urlsplit(request.htmx.current_url or "/").path or "/"
            return HttpResponseClientRedirect(f"{login_url}?next={quote(page)}")
        return response


class HtmxVaryMiddleware:
    """Every response says it varies with ``HX-Request``; every fragment is never stored.

    Several views answer an htmx request with a fragment and a plain request
    with the full page (or a redirect to it), at the same URL. Without
    ``Vary: HX-Request`` a browser or proxy may keep the fragment and show it
    for a normal visit or Back navigation. django-htmx's ``HtmxMiddleware``
    does not add the header (1.29 only parses the request headers), so this
    adds it to every response, whatever the view, and marks the answer to an
    htmx request (not a history restore, which gets the full page)
    ``Cache-Control: no-store`` on top, for caches that ignore ``Vary``.
    Placed above every middleware that answers by itself (login redirects,
    CSRF failures), so their responses carry it too.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        patch_vary_headers(response, ("HX-Request",))
        headers = request.headers
        if headers.get("HX-Request") == "true" and headers.get("HX-History-Restore-Request") != "true":
            add_never_cache_headers(response)
        return response
