"""Writes of the arena: draw a matchup for a voter, record a vote, undo the last one.

A matchup is two versions' completions of one held-out prompt, on a prompt this
voter has not yet judged for that pair; which version is shown on the left is a
coin flip, stored on the row (the voter never sees a name). The pair is the one
a promotion waits for (a newer version against the served one, where the project
requires the arena) while it lacks the direct votes it needs, and every other
draw while it waits but has its votes (:data:`PROMOTION_SHARE`); otherwise the
pair with the fewest votes so far, ties broken at random.
"""

from __future__ import annotations

import random
from collections import Counter

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from webapp.annotation.models import Choice
from webapp.annotation.selectors import UNDO_WINDOW
from webapp.errors import ApplicationError
from webapp.policies.models import Project
from webapp.training.models import VersionSample

from . import selectors
from .models import ArenaVote


# Once the matchup a promotion waits for has the votes it needs but no verdict, the share of draws
# that still go to it: its verdict keeps gathering votes, and the other pairs stay on offer.
PROMOTION_SHARE = 0.5


def _pair_key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _draw(*, project: Project, voter, rng: random.Random, only: tuple[int, int] | None = None) -> tuple[int, int, int] | None:
    """(version id, version id, prompt id) of a matchup this voter has not judged, or None when none is left.

    ``only``: two version ids; draw from that pair alone. Otherwise a pair a promotion waits for
    (:func:`selectors.promotion_matchups`) comes first while it lacks direct votes, and with
    probability :data:`PROMOTION_SHARE` after; then the least voted pairs.
    """
    versions = selectors.arena_versions(project=project)
    if only is not None:
        versions = selectors.prompts_answered(version_ids=only)
    ids = sorted(versions)
    pairs = [(i, j) for n, i in enumerate(ids) for j in ids[n + 1 :] if versions[i] & versions[j]]
    if not pairs:
        return None
    counted = selectors.counted_votes(project=project)
    per_pair = Counter(_pair_key(a, b) for a, b in counted.values_list("version_a_id", "version_b_id"))
    seen: dict[tuple[int, int], set[int]] = {}
    for a, b, prompt in counted.filter(voter=voter).values_list("version_a_id", "version_b_id", "prompt_id"):
        seen.setdefault(_pair_key(a, b), set()).add(prompt)
    waiting = selectors.promotion_matchups(project=project, version_ids=ids) if only is None else {}
    share = bool(waiting) and rng.random() < PROMOTION_SHARE
    first = {p for p, missing in waiting.items() if missing > 0 or share}
    rng.shuffle(pairs)
    for pair in sorted(pairs, key=lambda p: (p not in first, per_pair[p])):  # stable: random among equals
        left = sorted(versions[pair[0]] & versions[pair[1]] - seen.get(pair, set()))
        if left:
            return pair[0], pair[1], rng.choice(left)
    return None


@transaction.atomic
def arena_match_next(
    *, project: Project, voter, rng: random.Random | None = None, pair: tuple[int, int] | None = None
) -> ArenaVote | None:
    """The voter's pending matchup: the one they hold, else a new one; None when nothing is left to judge.

    A voter holds at most one pending matchup per project (the database keeps it so: two
    tabs asking at once get the same one). ``pair`` (two version ids of the project, e.g. from
    the compare page) asks for a matchup of those two: a pending matchup of another pair is
    dropped (it has no vote), and None means the voter has judged every prompt of the pair.
    """
    pending = ArenaVote.objects.filter(project=project, voter=voter, choice="").first()
    if pending is not None:
        if pair is None or {pending.version_a_id, pending.version_b_id} == set(pair):
            return pending
        pending.delete()
    rng = rng or random.Random()
    drawn = _draw(project=project, voter=voter, rng=rng, only=pair)
    if drawn is None:
        return None
    first, second, prompt_id = drawn
    if rng.random() < 0.5:
        first, second = second, first
    samples = {
        s.version_id: s for s in VersionSample.objects.filter(prompt_id=prompt_id, version_id__in=[first, second])
    }
    try:
        with transaction.atomic():
            return ArenaVote.objects.create(
                project=project, voter=voter, prompt_id=prompt_id,
                version_a_id=first, version_b_id=second, sample_a=samples[first], sample_b=samples[second],
            )
    except IntegrityError:  # another request of this voter drew one first
        return ArenaVote.objects.get(project=project, voter=voter, choice="")


@transaction.atomic
def arena_vote_cast(*, project: Project, voter, vote_id: int, choice: str) -> ArenaVote:
    """Record ``choice`` (a, b, tie, both_bad) on the voter's pending matchup ``vote_id``; returns the vote.

    The same vote sent twice (a double click) is stored once.

    Raises:
        ApplicationError: an unknown choice, or a matchup that is not this voter's pending one.
    """
    if choice not in Choice.values:
        raise ApplicationError(f"A vote is one of {', '.join(Choice.values)}, not {choice!r}.")
    vote = ArenaVote.objects.select_for_update().filter(pk=vote_id, project=project, voter=voter).first()
    if vote is None:
        raise ApplicationError("That matchup is not yours to vote on.")
    if vote.choice:
        if vote.choice == choice and vote.undone_at is None:
            return vote  # the same vote again: already stored
        raise ApplicationError("You have voted on that matchup already; undo it to vote again.")
    vote.choice = choice
    vote.voted_at = timezone.now()
    vote.save(update_fields=["choice", "voted_at"])
    return vote


@transaction.atomic
def arena_vote_undo(*, project: Project, voter, now=None) -> tuple[ArenaVote, ArenaVote]:
    """Undo the voter's last vote (within the annotation undo window): it is kept, marked undone, and
    the same matchup (same sides) becomes their pending one again. Returns ``(undone, pending)``.

    Raises:
        ApplicationError: no vote of theirs is recent enough to undo.
    """
    now = now or timezone.now()
    last = (
        ArenaVote.objects.select_for_update()
        .filter(project=project, voter=voter, undone_at__isnull=True, voted_at__gte=now - UNDO_WINDOW)
        .exclude(choice="")
        .order_by("-voted_at", "-id")
        .first()
    )
    if last is None:
        raise ApplicationError(f"Nothing to undo: no vote of yours in the last {int(UNDO_WINDOW.total_seconds() // 60)} minutes.")
    last.undone_at = now
    last.save(update_fields=["undone_at"])
    ArenaVote.objects.filter(Q(project=project, voter=voter, choice="")).delete()  # the matchup shown after it
    pending = ArenaVote.objects.create(
        project=project, voter=voter, prompt_id=last.prompt_id, version_a_id=last.version_a_id,
        version_b_id=last.version_b_id, sample_a_id=last.sample_a_id, sample_b_id=last.sample_b_id,
    )
    return last, pending
