"""Site-wide views: home, health check, CSRF failure page."""

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.http import require_safe

from webapp.annotation import selectors as annotation_selectors
from webapp.policies import selectors as policy_selectors
from webapp.policies.models import Membership, Project


@login_required
def home(request):
    """The projects the person is a member of (``home.html``), with their role in each.

    Someone who only annotates, in a single project, goes straight to it.
    """
    projects = policy_selectors.projects_for(user=request.user)
    if len(projects) == 1 and projects[0][1] == Membership.Role.ANNOTATOR:
        return redirect("annotation:annotate", slug=projects[0][0].slug)
    return render(request, "home.html", {"projects": projects})


def _broker_ok() -> tuple[bool, str]:
    from webapp.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return False, f"{type(exc).__name__}: {exc}"


@require_safe
def favicon(request):
    """``/favicon.ico``, which browsers ask for on their own: a redirect to our SVG icon (static
    ``rewardloop/favicon.svg``, also linked from ``base.html``), instead of a 404 in every console."""
    return redirect(static("rewardloop/favicon.svg"), permanent=True)


@require_safe
def healthz(request):
    """JSON health: database and broker reachable, served version and pool size per project.

    200 when both are reachable, 503 otherwise.
    """
    body = {"database": False, "broker": False, "projects": {}}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        body["database"] = True
    except Exception as exc:  # noqa: BLE001
        body["database_error"] = f"{type(exc).__name__}: {exc}"
    body["broker"], broker_error = _broker_ok()
    if broker_error:
        body["broker_error"] = broker_error
    if body["database"]:
        for project in Project.objects.select_related("served_version"):
            body["projects"][project.slug] = {
                "served_version": project.served_version.number if project.served_version else None,
                "pool_size": annotation_selectors.pool_size(project=project),
            }
    ok = body["database"] and body["broker"]
    return JsonResponse(body, status=200 if ok else 503)


def csrf_failure(request, reason=""):
    """An expired or missing CSRF token: tell the person to reload instead of failing silently."""
    message = "Your session's security token has expired. Reload the page and try again; nothing you saved was lost."
    if getattr(request, "htmx", False):
        return HttpResponse(render(request, "csrf_failure.html#message", {"message": message}).content, status=403)
    return render(request, "csrf_failure.html", {"message": message}, status=403)
