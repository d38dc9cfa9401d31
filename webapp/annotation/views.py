"""The annotator's page and the staff figures page. Thin: permissions, a service call, a template."""

import json
import re
from dataclasses import asdict, dataclass
from functools import wraps

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core import signing
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from webapp.errors import ApplicationError
from webapp.permissions import member_required, staff_required
from webapp.policies import services as policy_services
from webapp.policies.models import RUBRIC_MAX_CRITERIA, RatingMode
from webapp.policies.forms import textarea_lf
from webapp.policies.views import project_settings_form_save

from . import figures, selectors, services
from .markdown import guidelines_html
from .forms import GoldItemForm, GoldSettingsForm
from .models import Choice, Completion, GoldItem, Rating

TEMPLATE = "annotation/annotate.html"
COMMENT_MAX_CHARS = 2000

LIKERT_LABELS = {1: "bad", 2: "poor", 3: "ok", 4: "good", 5: "great"}


def _whole_number(value, top: int) -> int | None:
    """``value`` (a form field's text) as a whole number from 1 to ``top``, else None; not
    ``str.isdigit``, which takes "²" that ``int`` refuses."""
    value = "" if value is None else str(value)
    return int(value) if value in {str(n) for n in range(1, top + 1)} else None


def _sides(project, lease):
    """(pair, left completion, right completion) of a pairwise lease; Nones otherwise."""
    pairwise = lease is not None and project.rating_mode == RatingMode.PAIRWISE
    pair = selectors.pair_of(lease.completion) if pairwise else None
    if pair is None:
        return None, None, None
    if lease.a_on_left is False:
        return pair, pair.completion_b, pair.completion_a
    return pair, pair.completion_a, pair.completion_b


_READ_ONLY = object()


def _kept_input(*, comment: str, criteria, places: dict, ranked) -> dict:
    """What to fill in again on a card that shows the same item once more: after a refused submit
    (:func:`_posted_input`) or an undo (:func:`_undone_input`).

    ``criteria``: a score per criterion of the rubric shown, in its order (int, a form's str, or
    None); ``places``: completion id -> place (1 = best) of the outputs ``ranked`` shows.
    Returns ``{"comment": str, "criteria": [score or None per criterion], "places": {completion
    id: place or None per output shown}}``; values outside 1–5, or outside 1–k places, are dropped.
    """

    k = len(ranked or [])
    return {
        "comment": comment[:COMMENT_MAX_CHARS],
        "criteria": [_whole_number(score, 5) for score in criteria],
        "places": {m.pk: _whole_number(places.get(m.pk), k) for m in ranked or []},
    }


def _posted_input(post, *, rubric, ranked) -> dict:
    """:func:`_kept_input` of a refused submit's form: ``comment``, ``crit_<i>``, ``rank_<completion id>``."""
    return _kept_input(
        comment=post.get("comment", ""),
        criteria=[post.get(f"crit_{i}", "") for i in range(len(rubric or []))],
        places={m.pk: post.get(f"rank_{m.pk}", "") for m in ranked or []},
        ranked=ranked,
    )


def _undone_input(undone, *, rubric, ranked, undone_places) -> dict:
    """:func:`_kept_input` of the judgment just undone, shown again on its own item: its comment, its
    rubric scores by criterion name (a criterion renamed or added since comes back empty), and its
    ranking's places when ``undone_places`` (:func:`_undone_places`) found them on the card."""
    scores = {c["name"]: c["score"] for c in undone.criteria or []}
    places = {cid: place for place, cid in enumerate(undone.order, 1)} if undone_places is not None else {}
    return _kept_input(
        comment=undone.comment, criteria=[scores.get(c["name"]) for c in rubric or []], places=places, ranked=ranked
    )


SIGNED_OUT_KEY = "annotation_signed_out_judgment"
_SIGNED_OUT_FIELDS = re.compile(r"(choice|score|thumb|a_on_left|shown|comment|crit_\d{1,2}|rank_\d{1,12})")
_SIGNED_OUT_SALT = "webapp.annotation.signed-out-judgment.rater"
SIGNED_OUT_MAX_CHARS = 4096  # the kept fields as the session's JSON stores them
_CHOICE_WORDS = {"left": ("A is better", "a"), "right": ("B is better", "b"), "tie": ("tie", "t"), "both_bad": ("both bad", "x")}


@dataclass(frozen=True)
class SignedOut:
    """A rate, skip or undo refused because the session had ended (:func:`_remember_signed_out_judgment`):
    ``action`` "rate", "skip" or "undo"; ``completion_id`` its item (None for an undo); ``post`` the
    rate form's rating fields (empty for a skip or an undo)."""

    action: str
    completion_id: int | None
    post: dict

    @property
    def words(self) -> tuple[str, str]:
        """``(what was chosen, the key that gives it again)`` of the rating: ``("4 good", "4")``,
        ``("A is better", "a")``, ``("your ranking", "Enter")``."""
        post = self.post
        score = _whole_number(post.get("score"), 5)
        if score is not None:
            return f"{score} {LIKERT_LABELS[score]}", str(score)
        if post.get("thumb") in ("up", "down"):
            return f"thumbs {post['thumb']}", "2" if post["thumb"] == "up" else "1"
        if post.get("choice") in _CHOICE_WORDS:
            return _CHOICE_WORDS[post["choice"]]
        if any(name.startswith("rank_") for name in post):
            return "your ranking", "Enter"
        if any(name.startswith("crit_") for name in post):
            return "your rubric scores", "Enter"
        return "your judgment", ""

    @property
    def what(self) -> str:
        """What it did not do, for messages: ``"your last judgment (4 good) was not saved"``,
        ``"your skip was not saved"`` or ``"your undo was not done"``."""
        if self.action == "skip":
            return "your skip was not saved"
        if self.action == "undo":
            return "your undo was not done"
        return f"your last judgment ({self.words[0]}) was not saved"


_SIGNED_OUT_THEN = {  # the login page's next step when the request was kept
    "rate": "Sign in again to send it: its card shows it again while the item is still held for you.",
    "skip": "Sign in again to skip it: its card offers it again while the item is still held for you.",
    "undo": "Sign in again: the page then says whether your last judgment can still be undone.",
}


def _rater_signed(user) -> str:
    """The rate form's ``rater`` field: the annotator's id signed (:class:`django.core.signing.Signer`,
    a salt of its own), so that a judgment kept after the session ended is filled in again only for them."""
    return signing.Signer(salt=_SIGNED_OUT_SALT).sign(str(user.pk))


def _rater_of(post) -> int | None:
    """The annotator id a rate form's ``rater`` field (:func:`_rater_signed`) names; None if missing or forged."""
    try:
        return int(signing.Signer(salt=_SIGNED_OUT_SALT).unsign(post.get("rater", "")))
    except (signing.BadSignature, ValueError):
        return None


def _remember_signed_out_judgment(action: str):
    """Decorate the view of ``action`` ("rate", "skip" or "undo"): such a request sent after the session
    ended (signed out in another tab, or expired) is kept in the new anonymous session
    (``SIGNED_OUT_KEY``: a :class:`SignedOut` with the project's slug and the annotator) and the login
    page says it was not done; :func:`annotate` says so again after signing in, on the item's card
    when it is still held (a rating filled in again, a skip offered again), and for an undo whether
    there is still something to undo.

    Only a POST that passed the CSRF check gets here, and only the rating form's own fields are kept
    (``_SIGNED_OUT_FIELDS``, short values, the comment cut at ``COMMENT_MAX_CHARS``), with the
    annotator its ``rater`` field names: nothing is stored for the person. Nothing is kept (and no
    session row written) when ``rater`` is missing or forged, or the fields' JSON is over
    ``SIGNED_OUT_MAX_CHARS``. The login page's ``next`` is the annotate page (htmx: the page the person
    was on, ``HtmxLoginRedirectMiddleware``), never this POST-only address.
    Django's ``login`` keeps an anonymous session's data, so it is still there once signed in.
    """

    def decorate(view):
        @wraps(view)
        def wrapper(request, **kwargs):
            if request.method != "POST" or request.user.is_authenticated:
                return view(request, **kwargs)
            slug = kwargs["slug"]
            fields = {
                name: value[:COMMENT_MAX_CHARS] if name == "comment" else value[:200]
                for name, value in list(request.POST.items())[:64]
                if _SIGNED_OUT_FIELDS.fullmatch(name)
            } if action == "rate" else {}
            kept = SignedOut(action, kwargs.get("completion_id"), fields)
            rater = _rater_of(request.POST)
            if rater is not None and len(json.dumps(fields, separators=(",", ":"))) <= SIGNED_OUT_MAX_CHARS:
                request.session[SIGNED_OUT_KEY] = {**asdict(kept), "slug": slug, "annotator": rater}
                then = _SIGNED_OUT_THEN[action]
            else:
                request.session.pop(SIGNED_OUT_KEY, None)  # an earlier one is not the request named here
                then = f"Sign in again and {action} it again."
            messages.warning(request, f"You were signed out, so {kept.what}. {then}")
            # Back to the annotate page after signing in, not to this POST-only address (a 405).
            return redirect_to_login(reverse("annotation:annotate", args=[slug]))

        return wrapper

    return decorate


def _signed_out_judgment(request, slug) -> SignedOut | None:
    """The judgment, skip or undo :func:`_remember_signed_out_judgment` kept for this project, taken out of the session;
    None when another person kept it (``login`` keeps an anonymous session's data): dropped unseen."""
    kept = request.session.get(SIGNED_OUT_KEY)
    if not isinstance(kept, dict) or kept.get("slug") != slug:
        return None
    del request.session[SIGNED_OUT_KEY]
    if kept.get("annotator") != request.user.pk:
        return None
    return SignedOut(kept.get("action", "rate"), kept.get("completion_id"), kept.get("post") or {})  # no action: a rating


def _undone_places(undone, lease, ranked) -> list[int] | None:
    """The undone ranking as the outputs' numbers on the card shown now, best first (``[2, 1, 3]``:
    output 2 was ranked first), when ``undone`` is a ranking of the item ``lease`` shows again;
    None otherwise (not a ranking, another item, or outputs that no longer match its order)."""
    if undone is None or not undone.order or lease is None or not ranked or lease.completion_id != undone.completion_id:
        return None
    number = {m.pk: n for n, m in enumerate(ranked, 1)}
    if sorted(undone.order) != sorted(number):
        return None
    return [number[cid] for cid in undone.order]


def _context(request, project, *, error="", undone=None, unskipped=None, lease=_READ_ONLY, kept_post=None, signed_out=None):
    """What the page and the card show.

    After a POST, ``lease`` is the item to show next (None: nothing to rate right now,
    the waiting card, which asks again by POST every few seconds). Left out (a GET):
    the lease the person holds, only read; holding none, the card asks for the next
    item by POST as it loads (``ask_next``), so a page load writes nothing.
    ``kept_post``: the refused submit's form, when the card shows that same item again: its
    comment, rubric scores and ranking places are filled in as they were typed. ``undone``: the
    :class:`~webapp.annotation.models.RatingRevision` just undone; when the card shows its item
    again, its comment, rubric scores and ranking places are filled in the same way
    (:func:`_undone_input`). ``unskipped``: the :class:`~webapp.annotation.models.Skip` just undone
    (the card says whether its item is the one shown). ``signed_out``: the :class:`SignedOut` judgment,
    skip or undo refused because the session had ended; the card says an undo (with whether there is
    still something to undo), and a judgment or a skip on its own item, a judgment filled in again as
    a refused submit's (context ``signed_out``: None when the card does not say it).
    """
    read_only = lease is _READ_ONLY
    if read_only:
        lease = selectors.lease_held(project=project, annotator=request.user)
    else:
        services.pool_refill_nudge(project=project, queue_empty=lease is None)
    pair, left, right = _sides(project, lease)
    ranked = getattr(lease.completion, "ranked_members", None) if lease is not None else None
    progress = selectors.annotator_progress(project=project, annotator=request.user)
    rubric = project.rubric if project.rating_mode == RatingMode.RUBRIC else None
    undone_places = _undone_places(undone, lease, ranked)
    if signed_out is not None and (lease is None or signed_out.completion_id not in (None, lease.completion_id)):
        signed_out = None  # on the card: an undo (no item) on any item's, a judgment or a skip on its own item's
    if signed_out is not None and signed_out.action == "rate":
        kept_post = signed_out.post
    kept = None
    if lease is not None and kept_post is not None:
        kept = _posted_input(kept_post, rubric=rubric, ranked=ranked)
    elif lease is not None and undone is not None and lease.completion_id == undone.completion_id:
        kept = _undone_input(undone, rubric=rubric, ranked=ranked, undone_places=undone_places)
    if kept is not None:
        rubric = [{**c, "kept": score} for c, score in zip(rubric or [], kept["criteria"])] or rubric
        for member in ranked or []:
            member.kept_place = kept["places"].get(member.pk)
    scored = [c.get("kept") for c in rubric or []]
    return {
        "project": project,
        "mode": project.rating_mode,
        "lease": lease,
        "completion": lease.completion if lease else None,
        "ask_next": read_only and lease is None,
        "pair": pair,
        "left": left,
        "right": right,
        "ranked": ranked,
        "places": list(range(1, len(ranked) + 1)) if ranked else [],
        "progress": progress,
        "can_undo": progress["can_undo"],
        "undone": undone,
        "undone_places": undone_places,
        "unskipped": unskipped,
        "unskipped_shown": unskipped is not None and lease is not None and lease.completion_id == unskipped.completion_id,
        "error": error,
        "signed_out": signed_out,
        "scores": [(s, LIKERT_LABELS[s]) for s in range(1, 6)],
        "rubric": rubric,
        "rubric_current": scored.index(None) if None in scored else 0,  # the first criterion left to score
        "kept_comment": kept["comment"] if kept else "",
        "rater": _rater_signed(request.user),  # the rate form's signed annotator id (_remember_signed_out_judgment)
        # The waiting card: with no prompt to sample, no output is coming until staff import some.
        "no_prompts": not read_only and lease is None and not selectors.training_prompts_exist(project=project),
    }


def _render_card_or_page(request, project, *, status=200, **context_kw):
    context = _context(request, project, **context_kw)
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, f"{TEMPLATE}#card", context, status=status)
    context["guidelines"] = guidelines_html(project.guidelines)
    return render(request, TEMPLATE, context, status=status)


@never_cache
@member_required
@require_GET
def annotate(request, slug):
    """Full annotation page (``annotation/annotate.html``) with the item the person holds.

    Read only: holding no item, the card asks for one by POST (:func:`next_item`) as it loads.
    Never stored (``Cache-Control: no-store``, as every card view here), so Back after rating shows
    the item held now, not a card already rated. A judgment refused because the session had ended
    (:func:`_remember_signed_out_judgment`) is filled in again on its item if it is still held;
    otherwise the page says it was not saved and the item went back to the queue.
    """
    project = request.project
    signed_out = _signed_out_judgment(request, slug)
    context = _context(request, project, signed_out=signed_out)
    if signed_out is not None and context["signed_out"] is None:  # not on the card (one that asks is swapped at once)
        then = (", and its item is no longer held for you: it went back to the queue." if signed_out.action != "undo"
                else ": press u to undo your last judgment or skip now." if context["can_undo"]
                else ": there is nothing left to undo now (an undo reaches back 10 minutes).")
        messages.warning(request, f"You were signed out, so {signed_out.what}{then}")
    context["guidelines"] = guidelines_html(project.guidelines)
    return render(request, TEMPLATE, context)


@never_cache
@member_required
@require_GET
def card(request, slug):
    """The item card alone for htmx; the full page for a reload or history restore. Read only."""
    return _render_card_or_page(request, request.project)


@never_cache
@member_required
@require_POST
def next_item(request, slug):
    """Lease the next item (or keep the one held) and answer with its card (htmx) or redirect to the page.

    The card of an empty queue is the waiting state, which asks here again every few seconds.
    """
    project = request.project
    lease = services.lease_next(project=project, annotator=request.user)
    if not request.htmx:
        return redirect("annotation:annotate", slug=slug)
    return _render_card_or_page(request, project, lease=lease)


def _outdated_form(post, project) -> str | None:
    """Why a rate form rendered before staff changed the project's rating mode or rubric is refused, or None.

    The card's form names the mode it was rendered in (``mode``) and, in rubric mode, each criterion
    in its place (``crit_<i>_name``): a form of another mode, or whose criteria are not the rubric's
    names in the rubric's order, would store its judgment under the wrong mode or criterion. A form
    without them (another client) is left to :func:`_submit`'s own checks.
    """
    shown = post.get("mode")
    if shown and shown != project.rating_mode:
        was = RatingMode(shown).label if shown in RatingMode.values else shown
        return (
            f"The project's rating mode changed from {was} to {project.get_rating_mode_display()} while this card "
            "was open, so your judgment was not stored. Judge the item again as the card now asks."
        )
    # Browsers post a hidden field's line breaks as CRLF: a name stored with one (before rubric_check
    # refused them) must still match, or nobody could rate the project.
    names = [textarea_lf(post[f"crit_{i}_name"]) for i in range(RUBRIC_MAX_CRITERIA) if f"crit_{i}_name" in post]
    if names and project.rating_mode == RatingMode.RUBRIC and names != [textarea_lf(c["name"]) for c in project.rubric or []]:
        return (
            "The project's rubric changed while this card was open, so your scores were not stored. "
            "Score the criteria the card now shows."
        )
    return None


def _submit(request, project, completion) -> None:
    """Parse the rating for the project's mode and store it (raises ApplicationError; one with
    ``extra["outdated_form"]`` for a form of another mode or rubric, :func:`_outdated_form`)."""
    outdated = _outdated_form(request.POST, project)
    if outdated:
        raise ApplicationError(outdated, extra={"outdated_form": True})
    comment = request.POST.get("comment", "").strip()[:COMMENT_MAX_CHARS]
    common = {"annotator": request.user, "comment": comment}
    if project.rating_mode == RatingMode.PAIRWISE:
        pair = selectors.pair_of(completion)
        if pair is None:
            raise ApplicationError("This item is not a pair", stale=True)
        side = request.POST.get("choice", "")
        shown_a_left = request.POST.get("a_on_left")
        a_on_left = {"1": True, "0": False}.get(shown_a_left)
        left, right = (Choice.A, Choice.B) if a_on_left is not False else (Choice.B, Choice.A)
        lease = completion.leases.filter(annotator=request.user).first()
        if lease is not None and lease.a_on_left is not None:
            left, right = (Choice.A, Choice.B) if lease.a_on_left else (Choice.B, Choice.A)
        choice = {"left": left, "right": right, "tie": Choice.TIE, "both_bad": Choice.BOTH_BAD}.get(side, "")
        services.comparison_create(pair=pair, choice=choice, a_on_left=a_on_left, **common)
    elif project.rating_mode == RatingMode.RANKING:
        group = selectors.rank_group_of(completion)
        if group is None:
            raise ApplicationError("This item is not a ranking", stale=True)
        order, shown = _ranking_order(request.POST, group)
        services.ranking_create(group=group, order=order, shown_order=shown, **common)
    elif project.rating_mode == RatingMode.RUBRIC:
        criteria = {}
        for i, criterion in enumerate(project.rubric or []):
            try:
                criteria[criterion["name"]] = int(request.POST.get(f"crit_{i}", ""))
            except ValueError:
                raise ApplicationError(f"Score every criterion from 1 to 5 ({criterion['name']} is missing).") from None
        services.rating_create(completion=completion, criteria=criteria, **common)
    elif project.rating_mode == RatingMode.THUMBS:
        thumb = request.POST.get("thumb", "")
        if thumb not in ("up", "down"):
            raise ApplicationError("Choose thumbs up or thumbs down.")
        services.rating_create(completion=completion, thumbs_up=thumb == "up", **common)
    else:
        try:
            score = int(request.POST.get("score", ""))
        except ValueError:
            raise ApplicationError("Choose a rating from 1 to 5.") from None
        services.rating_create(completion=completion, score=score, **common)


def _ranking_order(post, group) -> tuple[list[int], list[int] | None]:
    """``(order, shown)`` from a ranking form: a place ``rank_<completion id>`` (1 = best) per output
    of the group, and ``shown`` (their ids as shown, comma-separated, optional).

    Raises:
        ApplicationError: an output without a place, or two outputs in one place.
    """
    member_ids = sorted(group.members.values_list("pk", flat=True))
    places = {}
    for cid in member_ids:
        try:
            places[cid] = int(post.get(f"rank_{cid}", ""))
        except ValueError:
            raise ApplicationError(f"Give every output a place from 1 to {len(member_ids)} (press their numbers, best first).") from None
    if sorted(places.values()) != list(range(1, len(member_ids) + 1)):
        raise ApplicationError(f"Give each output a different place from 1 to {len(member_ids)}.")
    try:
        shown = [int(x) for x in post.get("shown", "").split(",") if x]
    except ValueError:
        shown = None
    return sorted(member_ids, key=places.__getitem__), shown


def _item(request, completion_id) -> Completion:
    """The completion of the request's project (set by ``member_required``), or 404."""
    completion = selectors.completion_of_project(project=request.project, completion_id=completion_id)
    if completion is None:
        raise Http404("No such item in this project.")
    return completion


@never_cache
@_remember_signed_out_judgment("rate")
@member_required
@require_POST
def rate(request, slug, completion_id):
    """Store a rating (Likert, thumbs or pairwise, by the project's mode); answer with the next card (htmx) or redirect.

    The rating and the next lease commit together: one transaction per submit.
    """
    completion = _item(request, completion_id)
    return _then_next(
        request, slug, completion.project, lambda: _submit(request, completion.project, completion), item=completion
    )


@never_cache
@_remember_signed_out_judgment("skip")
@member_required
@require_POST
def skip(request, slug, completion_id):
    """Skip the item: it goes back to the queue and is not offered to this annotator again."""
    completion = _item(request, completion_id)
    return _then_next(
        request, slug, completion.project, lambda: services.item_skip(annotator=request.user, completion=completion)
    )


def _then_next(request, slug, project, action, *, item=None):
    """Run ``action`` (a judgment or a skip) and, for htmx, lease the next item in the same transaction.

    Answers the next card (htmx; ``action``'s :class:`ApplicationError` shown on it) or
    redirects to the annotate page with the error as a message. A refused judgment of ``item``
    whose card comes back for that same item keeps what was typed (comment, scores, places).
    """
    error, lease, outdated_form = "", None, False
    with transaction.atomic():
        try:
            action()
        except ApplicationError as exc:
            error, outdated_form = exc.message, exc.extra.get("outdated_form", False)
        if request.htmx:
            lease = services.lease_next(project=project, annotator=request.user)
    if not request.htmx:
        if error:
            messages.error(request, error)
        return redirect("annotation:annotate", slug=slug)
    # An outdated form's scores and places are not filled in again: they were given in another mode or rubric.
    same_item = (
        bool(error) and not outdated_form and item is not None and lease is not None and lease.completion_id == item.pk
    )
    return _render_card_or_page(request, project, error=error, lease=lease,
                                kept_post=request.POST if same_item else None)


@never_cache
@_remember_signed_out_judgment("undo")
@member_required
@require_POST
def undo(request, slug):
    """Undo the annotator's last action (within 10 minutes), a judgment or a skip: its item comes back
    to be rated again."""
    project = request.project
    error, undone, unskipped, lease = "", None, None, None
    try:
        result = services.judgment_undo(project=project, annotator=request.user)
        undone, unskipped, lease = result.revision, result.skip, result.lease
    except ApplicationError as exc:
        error = exc.message
    if lease is None and request.htmx:
        lease = services.lease_next(project=project, annotator=request.user)
    if not request.htmx:
        if error:
            messages.error(request, error)
        elif unskipped is not None:
            messages.success(request, "Undone: your skip. The item you skipped is back in your queue.")
        return redirect("annotation:annotate", slug=slug)
    return _render_card_or_page(request, project, error=error, undone=undone, unskipped=unskipped, lease=lease)


@member_required
@require_GET
def history(request, slug):
    """The person's recent judgments in this project (``annotation/history.html``), each with the
    version that wrote the output and how it was sampled: what the card keeps hidden while they rate."""
    project = request.project
    return render(
        request,
        "annotation/history.html",
        {
            "project": project,
            "judgments": selectors.recent_judgments(project=project, annotator=request.user),
            "sampling": selectors.SAMPLING_DESCRIPTION,
        },
    )


_GOLD_KIND_OF_MODE = {RatingMode.THUMBS: "thumbs", RatingMode.PAIRWISE: "pairwise", RatingMode.RANKING: "ranking"}


def _gold_form_for(project, *, edit: int | None, data=None) -> GoldItemForm:
    """The gold form: prefilled with gold item ``edit``'s answer, else empty for the project's mode."""
    kind = _GOLD_KIND_OF_MODE.get(project.rating_mode, "likert")
    initial = {}
    gold = GoldItem.objects.filter(project=project, completion_id=edit).first() if edit else None
    if gold is not None:
        kind = figures.gold_answer_kind(gold.answer)
        answer = gold.answer
        initial = {"completion": gold.completion_id, "note": gold.note, **{k: answer[k] for k in ("score", "tolerance", "choice", "best") if k in answer}}
        if "thumbs_up" in answer:
            initial["thumbs"] = "up" if answer["thumbs_up"] else "down"
    if data is not None:
        kind = data.get("kind") if data.get("kind") in GoldItemForm.KIND_FIELDS else kind
        return GoldItemForm(data, kind=kind)
    return GoldItemForm(initial=initial, kind=kind)


def _figures_render(
    request, *, gold_form: GoldItemForm, editing: int | None = None, status: int = 200, gold_settings_form=None
):
    project = request.project
    source = request.GET.get("source") or None
    if source not in (None, *figures.SOURCES):
        source = None  # an unknown filter shows everything, as no filter does
    return render(
        request,
        "annotation/figures.html",
        {
            "project": project,
            "source": source,
            "sources": Rating.Source.choices,
            "annotators": figures.annotator_figures(project=project, source=source),
            "agreement": figures.agreement(project=project),
            "recent_comments": figures.recent_comments(project=project, source=source),
            "gold_items": figures.gold_items(project=project),
            "gold_form": gold_form,
            "gold_editing": editing,
            "gold_settings_form": gold_settings_form or GoldSettingsForm(instance=project),
        },
        status=status,
    )


@staff_required
@require_GET
def figures_page(request, slug):
    """Staff only (``annotation/figures.html``): per-annotator counts, median seconds per item, gold
    accuracy and training weight, Krippendorff's alpha; the gold items with a form to add one or,
    with ``?gold=<item #>``, to change its answer; ``?source=annotator|production`` keeps one
    source's judgments in the annotator table and the comments."""
    try:
        edit = int(request.GET.get("gold", ""))
    except ValueError:
        edit = None
    editing = edit if edit and GoldItem.objects.filter(project=request.project, completion_id=edit).exists() else None
    return _figures_render(request, gold_form=_gold_form_for(request.project, edit=editing), editing=editing)


@staff_required
@require_POST
def gold_set(request, slug):
    """Add a gold item or change its answer (``services.gold_item_set``: validated, audit-logged with
    the verdicts the change turned). A bad item number or answer re-shows the page with the reason (400)."""
    project = request.project
    form = _gold_form_for(project, edit=None, data=request.POST)
    if form.is_valid():
        completion = Completion.objects.filter(pk=form.cleaned_data["completion"], project=project).select_related("prompt").first()
        if completion is None:
            form.add_error("completion", f"This project has no item #{form.cleaned_data['completion']}.")
        else:
            existed = GoldItem.objects.filter(completion=completion).exists()
            try:
                services.gold_item_set(completion=completion, answer=form.answer(), note=form.cleaned_data["note"], actor=request.user)
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                verb = "changed" if existed else "added"
                messages.success(request, f"Gold item #{completion.pk} {verb}; accuracy is scored against the new answer (see the audit log).")
                return redirect("annotation:figures", slug=slug)
    messages.error(request, "Nothing was saved: check the gold item form below.")
    return _figures_render(request, gold_form=form, status=400)


@staff_required
@require_POST
def gold_settings(request, slug):
    """Save the gold checks (``policies.services.project_gold_settings_update``: validated, audited with the
    old and new values): the gold item rate, and the accuracy rule that down-weights an annotator in
    training. A value out of range re-shows the page with the reason next to its field (400)."""
    project = request.project
    form = GoldSettingsForm(request.POST, instance=type(project).objects.get(pk=project.pk))
    refused = project_settings_form_save(
        request, form, project=project, update=policy_services.project_gold_settings_update,
        fields=form.Meta.fields, saved="Gold settings saved.",
        invalid_page=lambda form: _figures_render(
            request, gold_form=_gold_form_for(project, edit=None), gold_settings_form=form, status=400
        ),
    )
    return refused or redirect(f"{reverse('annotation:figures', args=[slug])}#gold-settings")
