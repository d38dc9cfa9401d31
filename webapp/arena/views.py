"""The blind arena (voters) and its leaderboard (staff). Thin: permissions, a service call, a template."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError
from webapp.permissions import member_required, staff_required
from webapp.policies import plotfiles
from webapp.policies.models import ModelVersion

from . import selectors, services
from .models import ArenaVote

TEMPLATE = "arena/arena.html"


def _voter_check(request) -> None:
    if not selectors.arena_may_vote(project=request.project, role=request.project_role):
        raise PermissionDenied("This project's arena is open to its staff only.")


def _card(request, *, match=None, ask_next=False, error="", undone=None, status=200):
    """The arena page, or its ``card`` partial for an htmx swap."""
    project = request.project
    context = {
        "project": project,
        "match": match,
        "ask_next": ask_next,
        "error": error,
        "undone": undone,
        "can_undo": selectors.arena_can_undo(project=project, voter=request.user),
        "empty_reason": "" if match or ask_next else selectors.arena_empty_reason(project=project),
        "voted": selectors.counted_votes(project=project).filter(voter=request.user).count(),
    }
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, f"{TEMPLATE}#card", context, status=status)
    return render(request, TEMPLATE, context, status=status)


@member_required
@require_GET
def arena(request, slug):
    """The arena page (``arena/arena.html``): the matchup the voter holds, read only; holding none, the
    card asks for one by POST as it loads. 403 for annotators unless the project opens the arena to them."""
    _voter_check(request)
    match = ArenaVote.objects.filter(project=request.project, voter=request.user, choice="").first()
    return _card(request, match=match, ask_next=match is None)


@member_required
@require_POST
def next_match(request, slug):
    """Draw (or return the held) matchup; the card, or the empty card when nothing is left to judge.

    With ``a`` and ``b`` (two version numbers, the compare page's "Vote blind" form): a matchup of
    those two versions, then the arena page (with a message when none is left for this voter).
    """
    _voter_check(request)
    numbers = [request.POST.get("a", ""), request.POST.get("b", "")]
    if not any(numbers):
        return _card(request, match=services.arena_match_next(project=request.project, voter=request.user))
    versions = ModelVersion.objects.filter(
        project=request.project, number__in=[n for n in numbers if n.isdigit() and len(n) < 10]
    )
    if len(versions) != 2:
        messages.error(request, "Choose two different versions of this project for the arena.")
        return redirect("arena:arena", slug=slug)
    match = services.arena_match_next(
        project=request.project, voter=request.user, pair=tuple(v.pk for v in versions)
    )
    if match is None:
        messages.info(
            request, f"You have voted on every held-out prompt of v{numbers[0]} against v{numbers[1]}; here are other matchups."
        )
    return redirect("arena:arena", slug=slug)


@member_required
@require_POST
def vote(request, slug, vote_id):
    """Store the vote (``choice`` = a, b, tie, both_bad) on the voter's matchup; answer with the next matchup.

    A bad choice or someone else's matchup: the card again with the error (400), nothing stored.
    """
    _voter_check(request)
    try:
        services.arena_vote_cast(
            project=request.project, voter=request.user, vote_id=vote_id, choice=request.POST.get("choice", "")
        )
    except ApplicationError as exc:
        held = ArenaVote.objects.filter(project=request.project, voter=request.user, choice="").first()
        return _card(request, match=held, error=exc.message, status=400)
    if not (request.htmx and not request.htmx.history_restore_request):
        return redirect("arena:arena", slug=slug)
    return _card(request, match=services.arena_match_next(project=request.project, voter=request.user))


@member_required
@require_POST
def undo(request, slug):
    """Undo the voter's last vote (kept as history) and show that matchup again."""
    _voter_check(request)
    try:
        undone, pending = services.arena_vote_undo(project=request.project, voter=request.user)
    except ApplicationError as exc:
        held = ArenaVote.objects.filter(project=request.project, voter=request.user, choice="").first()
        return _card(request, match=held, ask_next=held is None, error=exc.message, status=400)
    return _card(request, match=pending, undone=undone)


@staff_required
@require_GET
def leaderboard(request, slug):
    """Versions ranked by their Bradley–Terry score from the arena's votes, with 95% intervals and a plot
    (``arena/leaderboard.html``); says so when the arena is empty; the candidate's verdict when the project
    requires the arena for promotion."""
    project = request.project
    board = selectors.arena_leaderboard(project=project)
    plot = plotfiles.plot_ensure(*selectors.arena_leaderboard_plot_spec(board=board), slot=f"project-{project.pk}-arena")
    served = project.served_version
    candidates = [r.version for r in board.rows if served and r.version.number > served.number]
    verdicts = [selectors.arena_verdict(candidate=c, served=served, board=board) for c in candidates]
    return render(
        request,
        "arena/leaderboard.html",
        {
            "project": project,
            "board": board,
            "plot": plot,
            "verdicts": list(zip(candidates, verdicts)),
            "may_vote": selectors.arena_may_vote(project=project, role=request.project_role),
        },
    )


@staff_required
@require_GET
def leaderboard_plot(request, slug):
    """PNG: each version's arena score with its 95% interval (drawn by a worker once per set of votes)."""
    board = selectors.arena_leaderboard(project=request.project)
    spec = selectors.arena_leaderboard_plot_spec(board=board)
    return plotfiles.plot_response(*spec, slot=f"project-{request.project.pk}-arena", asked_key=request.GET.get("v", ""))
