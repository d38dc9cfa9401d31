"""The annotator's page. Thin: permissions, a service call, a template."""

import time

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError
from webapp.policies.models import Project

from . import selectors, services, tasks
from .models import Completion

TEMPLATE = "annotation/annotate.html"
REFILL_NUDGE_EVERY_S = 10
_last_nudge: dict[int, float] = {}


def _nudge_pool_refill(project) -> None:
    """Ask the generation worker to top up the pool, at most every few seconds per process."""
    now = time.monotonic()
    if now - _last_nudge.get(project.pk, -1e9) >= REFILL_NUDGE_EVERY_S:
        _last_nudge[project.pk] = now
        tasks.pool_refill.delay(project.pk)


def _context(request, project, *, error=""):
    lease = services.lease_next(project=project, annotator=request.user)
    if lease is None or selectors.pool_size(project=project) < project.pool_target // 2:
        _nudge_pool_refill(project)
    return {
        "project": project,
        "lease": lease,
        "completion": lease.completion if lease else None,
        "progress": selectors.annotator_progress(project=project, annotator=request.user),
        "error": error,
        "scores": range(1, 6),
    }


def _render_card_or_page(request, project, *, error="", status=200):
    context = _context(request, project, error=error)
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, f"{TEMPLATE}#card", context, status=status)
    return render(request, TEMPLATE, context, status=status)


@login_required
@require_GET
def annotate(request, slug):
    """Full annotation page (``annotation/annotate.html``) with the leased item, or the waiting state."""
    project = get_object_or_404(Project, slug=slug)
    return render(request, TEMPLATE, _context(request, project))


@login_required
@require_GET
def card(request, slug):
    """The item card alone for htmx (polled while waiting), the full page otherwise."""
    project = get_object_or_404(Project, slug=slug)
    return _render_card_or_page(request, project)


def _score(request) -> int:
    try:
        return int(request.POST.get("score", ""))
    except ValueError:
        raise ApplicationError("Choose a rating from 1 to 5.") from None


@login_required
@require_POST
def rate(request, slug, completion_id):
    """Store a rating, then answer with the next card (htmx) or redirect to the page."""
    project = get_object_or_404(Project, slug=slug)
    completion = get_object_or_404(Completion, pk=completion_id, project=project)
    error = ""
    try:
        lease = completion.leases.filter(annotator=request.user).first()
        seconds = (timezone.now() - lease.created_at).total_seconds() if lease else None
        services.rating_create(
            annotator=request.user,
            completion=completion,
            score=_score(request),
            comment=request.POST.get("comment", "").strip()[:2000],
            seconds_spent=seconds,
        )
    except ApplicationError as exc:
        error = exc.message
    if not request.htmx:
        if error:
            messages.error(request, error)
        return redirect("annotation:annotate", slug=slug)
    return _render_card_or_page(request, project, error=error, status=200)


@login_required
@require_POST
def skip(request, slug, completion_id):
    """Skip the item: it goes back to the queue and is not offered to this annotator again."""
    project = get_object_or_404(Project, slug=slug)
    completion = get_object_or_404(Completion, pk=completion_id, project=project)
    services.item_skip(annotator=request.user, completion=completion)
    if not request.htmx:
        return redirect("annotation:annotate", slug=slug)
    return _render_card_or_page(request, project)
