"""Reads of the arena: the matchups on offer, the Bradley–Terry leaderboard and the promotion verdict.

The fit: each version ``i`` has a strength ``s_i`` and ``P(i beats j) = 1 / (1 + exp(s_j - s_i))``
(Bradley & Terry 1952), a logistic regression on the differences. It is fitted as the
maximum a posteriori under a wide Gaussian prior ``N(0, 1/PRIOR_PRECISION)`` on every
strength (scipy's trust-region Newton on the win counts), with the Laplace
approximation (inverse Hessian) for the covariance, hence intervals; the prior keeps a
version that has only won or only lost finite. A tie and "both bad" count as half a
win each way. Scores are shown on the Elo scale: ``1000 + 400 / ln(10) · s`` (a
100-point gap ≈ 64% expected wins).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.core.cache import cache
from django.db.models import Count, Max, Q
from django.utils import timezone

from webapp.annotation.models import Choice
from webapp.annotation.selectors import UNDO_WINDOW
from webapp.policies.models import ArenaVoters, Membership, ModelVersion, Project
from webapp.training.models import ACTIVE_STATUSES, VersionSample

from .models import ArenaVote

PRIOR_PRECISION = 0.1  # prior N(0, 10) on each strength: wide, but keeps a one-sided record finite
ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1000.0
Z95 = 1.959964
BEAT_PROBABILITY = 0.9  # posterior P(candidate stronger than served) needed to "beat" it
MAX_VERSIONS = 8  # matchups are drawn among the newest evaluated versions (and the served one)
FIT_CACHE_SECONDS = 24 * 3600  # a fit is keyed by the votes' state, so it never goes stale; this only frees memory


@dataclass
class ArenaRow:
    version: ModelVersion
    score: float  # Elo scale
    low: float  # 95% interval, Elo scale
    high: float
    votes: int
    wins: int
    losses: int
    ties: int  # ties and "both bad"
    served: bool


@dataclass
class Leaderboard:
    rows: list[ArenaRow]  # best first
    n_votes: int
    empty_reason: str = ""  # set when the arena has fewer than two versions to compare
    strengths: dict[int, float] = field(default_factory=dict)  # version id -> BT strength (logit scale)
    covariance: dict[tuple[int, int], float] = field(default_factory=dict)


@dataclass
class Verdict:
    beats: bool
    head_to_head: int  # votes that compared the two directly
    probability: float | None  # posterior P(candidate stronger), None without votes
    reason: str  # a sentence for staff


def arena_may_vote(*, project: Project, role: str | None) -> bool:
    """Whether a member with ``role`` may vote in ``project``'s arena (staff always; annotators if the project says)."""
    if role == Membership.Role.STAFF:
        return True
    return role == Membership.Role.ANNOTATOR and project.arena_voters == ArenaVoters.MEMBERS


def prompts_answered(*, version_ids) -> dict[int, set[int]]:
    """Version id -> ids of the held-out prompts it has completed (versions without any are left out)."""
    by_version: dict[int, set[int]] = defaultdict(set)
    for version_id, prompt_id in VersionSample.objects.filter(version_id__in=version_ids).values_list("version_id", "prompt_id"):
        by_version[version_id].add(prompt_id)
    return dict(by_version)


def arena_versions(*, project: Project) -> dict[int, set[int]]:
    """Version id -> ids of the held-out prompts it has completed, for the versions matchups are drawn from:
    the newest :data:`MAX_VERSIONS` with completions, plus the served version."""
    by_version: dict[int, set[int]] = defaultdict(set)
    for version_id, prompt_id in VersionSample.objects.filter(version__project=project).values_list("version_id", "prompt_id"):
        by_version[version_id].add(prompt_id)
    numbers = dict(ModelVersion.objects.filter(pk__in=by_version).values_list("pk", "number"))
    keep = set(sorted(by_version, key=lambda pk: -numbers[pk])[:MAX_VERSIONS])
    if project.served_version_id in by_version:
        keep.add(project.served_version_id)
    return {pk: by_version[pk] for pk in keep}


def arena_empty_reason(*, project: Project, versions: dict[int, set[int]] | None = None) -> str:
    """Why no matchup can be drawn ("" when one can): fewer than two versions with completions of a same prompt."""
    versions = arena_versions(project=project) if versions is None else versions
    ids = list(versions)
    if any(versions[i] & versions[j] for n, i in enumerate(ids) for j in ids[n + 1 :]):
        return ""
    if len(ids) < 2:
        return (
            f"The arena needs two model versions that answered the same held-out prompts; this project has "
            f"{'one' if ids else 'none yet'}. A training run's evaluation adds its new version."
        )
    return "No two versions have answered the same held-out prompt yet; compare them once to fill their samples."


def counted_votes(*, project: Project):
    """The votes the fit reads: cast and not undone."""
    return ArenaVote.objects.filter(project=project, voted_at__isnull=False, undone_at__isnull=True).exclude(choice="")


def direct_votes(*, project: Project, version_id: int, others=None) -> Counter:
    """Counted votes (:func:`counted_votes`) that compared version ``version_id`` directly with another.

    Args:
        version_id: the version every vote counted must show (on either side).
        others: version ids to count against; all other versions when None.

    Returns:
        ``Counter({other version id: votes})``, from one grouped query (at most two rows per other
        version, one per side it was shown on).
    """
    votes = counted_votes(project=project).filter(Q(version_a_id=version_id) | Q(version_b_id=version_id))
    if others is not None:
        others = list(others)
        votes = votes.filter(Q(version_a_id__in=others) | Q(version_b_id__in=others))
    counts = Counter()
    for a, b, n in votes.order_by().values_list("version_a_id", "version_b_id").annotate(n=Count("pk")):
        counts[a if b == version_id else b] += n
    return counts


def _comparisons(votes) -> list[tuple[int, int, float]]:
    """(winner id, loser id, weight) triples; a tie or "both bad" is half a win each way."""
    pairs = []
    for a, b, choice in votes:
        if choice == Choice.A:
            pairs.append((a, b, 1.0))
        elif choice == Choice.B:
            pairs.append((b, a, 1.0))
        else:
            pairs += [(a, b, 0.5), (b, a, 0.5)]
    return pairs


def bradley_terry_fit(
    *, comparisons: list[tuple[int, int, float]], items: list[int]
) -> tuple[dict[int, float], dict[tuple[int, int], float]]:
    """Posterior mean strength per item and the covariance of any two, from weighted ``(winner, loser)`` pairs.

    The maximum a posteriori strengths under ``P(i beats j) = σ(s_i − s_j)`` and the prior
    ``N(0, 1/PRIOR_PRECISION)`` on each strength, found by ``scipy.optimize.minimize``
    (trust-region Newton, exact gradient and Hessian) on the win counts; the covariance is
    the inverse Hessian there (Laplace approximation). Costs O(K²) per iteration in the
    number of items K, whatever the number of votes.

    Args:
        comparisons: ``(winner, loser, weight)``; weight 1 for a win, 0.5 each way for a tie.
            May be empty (the prior comes back).
        items: every item key to score (those without comparisons get the prior).

    Returns:
        ``(mean, cov)``: ``mean[item]`` on the logit scale, centred to mean zero over ``items``, and
        ``cov[(i, j)]`` of the centred strengths for every pair of items (differences of strengths,
        and so every win probability, are unchanged by the centring).
    """
    import numpy as np
    from scipy.optimize import minimize

    index = {item: n for n, item in enumerate(items)}
    k = len(items)
    wins = np.zeros((k, k))  # wins[i, j]: (weighted) times i beat j
    for winner, loser, weight in comparisons:
        wins[index[winner], index[loser]] += weight
    games = wins + wins.T

    def objective(s):
        diff = s[:, None] - s[None, :]  # (K, K): s_i - s_j
        nll = float(np.sum(wins * np.logaddexp(0.0, -diff))) + 0.5 * PRIOR_PRECISION * float(s @ s)
        surprise = wins * (1.0 - 1.0 / (1.0 + np.exp(-diff)))  # wins[i, j] · (1 − σ(s_i − s_j))
        return nll, surprise.sum(axis=0) - surprise.sum(axis=1) + PRIOR_PRECISION * s

    def hessian(s):
        p = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))
        info = games * p * (1.0 - p)  # (K, K), symmetric
        return np.diag(info.sum(axis=1) + PRIOR_PRECISION) - info

    mean = minimize(objective, np.zeros(k), jac=True, hess=hessian, method="trust-exact").x
    cov = np.linalg.inv(hessian(mean))
    # Strengths are defined up to a common shift, which the prior alone pins down; centre them
    # (mean zero) so an interval shows how well a version is placed among the others, not the shift.
    centre = np.eye(k) - 1.0 / k
    mean, cov = centre @ mean, centre @ cov @ centre.T
    return (
        {item: float(mean[n]) for item, n in index.items()},
        {(i, j): float(cov[index[i], index[j]]) for i in items for j in items},
    )


def _votes_state(*, project: Project) -> tuple:
    """What identifies the set of counted votes, in one aggregate query: how many are counted, the
    latest cast and the latest undo. A cast raises the first two, an undo changes the first and the
    last, so any change of the votes the fit reads changes this (a vote's choice is set once)."""
    state = ArenaVote.objects.filter(project=project).aggregate(
        n=Count("pk", filter=Q(voted_at__isnull=False, undone_at__isnull=True) & ~Q(choice="")),
        voted=Max("voted_at"),
        undone=Max("undone_at"),
    )
    return state["n"], state["voted"] and state["voted"].isoformat(), state["undone"] and state["undone"].isoformat()


def arena_fit(*, project: Project, include=()) -> tuple[dict[int, float], dict[tuple[int, int], float]]:
    """:func:`bradley_terry_fit` of the project's counted votes over the versions they compare and the
    version ids in ``include``, cached (Django's cache) under a key of the votes' state
    (:func:`_votes_state`) and those ids, so polling pages cost one aggregate query until a vote is
    cast or undone (the votes are read only on a cache miss).

    Returns ``(mean, cov)`` as :func:`bradley_terry_fit`; empty dicts with fewer than two versions.
    Adding a version without votes to ``include`` changes the centred strengths but no difference of
    strengths nor its variance, so a verdict reads the same from any fit that holds both versions.
    """
    include = sorted(set(include))
    digest = hashlib.sha1(repr((_votes_state(project=project), include)).encode()).hexdigest()
    key = f"arena-fit:{project.pk}:{digest}"
    fit = cache.get(key)
    if fit is not None:
        return fit
    votes = list(counted_votes(project=project).values_list("version_a_id", "version_b_id", "choice"))
    ids = sorted(set(include) | {a for a, _, _ in votes} | {b for _, b, _ in votes})
    fit = bradley_terry_fit(comparisons=_comparisons(votes), items=ids) if len(ids) >= 2 else ({}, {})
    cache.set(key, fit, FIT_CACHE_SECONDS)
    return fit


def arena_leaderboard(*, project: Project) -> Leaderboard:
    """Every version that has votes or can be drawn, with its Bradley–Terry score and 95% interval, best first."""
    versions = arena_versions(project=project)
    votes = list(counted_votes(project=project).values_list("version_a_id", "version_b_id", "choice"))
    mean, cov = arena_fit(project=project, include=versions)
    ids = sorted(mean)  # the versions and those the votes compare
    empty = arena_empty_reason(project=project, versions=versions) if not votes else ""
    if len(ids) < 2:
        return Leaderboard(rows=[], n_votes=len(votes), empty_reason=empty or arena_empty_reason(project=project, versions=versions))
    tally = {pk: {"votes": 0, "wins": 0, "losses": 0, "ties": 0} for pk in ids}
    for a, b, choice in votes:
        if a not in tally or b not in tally:  # cast after the fit's read (a race): shown on the next poll
            continue
        for pk in (a, b):
            tally[pk]["votes"] += 1
        if choice in (Choice.A, Choice.B):
            winner, loser = (a, b) if choice == Choice.A else (b, a)
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
        else:
            tally[a]["ties"] += 1
            tally[b]["ties"] += 1
    objects = ModelVersion.objects.in_bulk(ids)
    rows = []
    for pk in ids:
        half = Z95 * ELO_SCALE * math.sqrt(max(cov[(pk, pk)], 0.0))
        score = ELO_BASE + ELO_SCALE * mean[pk]
        rows.append(
            ArenaRow(version=objects[pk], score=score, low=score - half, high=score + half,
                     served=pk == project.served_version_id, **tally[pk])
        )
    rows.sort(key=lambda r: (-r.score, -r.version.number))
    return Leaderboard(rows=rows, n_votes=len(votes), empty_reason=empty, strengths=mean, covariance=cov)


def arena_verdict(*, candidate: ModelVersion, served: ModelVersion, board: Leaderboard | None = None) -> Verdict:
    """Whether ``candidate`` beats ``served`` in the arena.

    It does when at least ``project.arena_min_votes`` votes compared the two directly and the
    posterior probability that the candidate is the stronger is at least :data:`BEAT_PROBABILITY`
    (from the fit over all votes: the difference of strengths is Gaussian under the Laplace approximation).
    """
    project = candidate.project
    if board is not None:
        strengths, covariance = board.strengths, board.covariance
    else:  # a banner polled on every page load: the cached fit, not a leaderboard
        strengths, covariance = arena_fit(project=project, include=(candidate.pk, served.pk))
    head_to_head = direct_votes(project=project, version_id=served.pk, others=[candidate.pk])[candidate.pk]
    if candidate.pk not in strengths or served.pk not in strengths:
        probability = None
    else:
        diff = strengths[candidate.pk] - strengths[served.pk]
        var = (
            covariance[(candidate.pk, candidate.pk)]
            + covariance[(served.pk, served.pk)]
            - 2 * covariance[(candidate.pk, served.pk)]
        )
        probability = 0.5 * (1 + math.erf(diff / math.sqrt(2 * max(var, 1e-12))))
    names = f"v{candidate.number} against v{served.number}"
    if head_to_head < project.arena_min_votes:
        return Verdict(False, head_to_head, probability,
                       f"the arena has {head_to_head} of the {project.arena_min_votes} votes it needs on {names}.")
    if probability is None or probability < BEAT_PROBABILITY:
        shown = "?" if probability is None else f"{probability:.0%}"
        return Verdict(False, head_to_head, probability,
                       f"v{candidate.number} has not beaten v{served.number} in the arena "
                       f"(P(stronger) {shown} after {head_to_head} direct votes; {BEAT_PROBABILITY:.0%} needed).")
    return Verdict(True, head_to_head, probability,
                   f"v{candidate.number} beat v{served.number} in the arena "
                   f"(P(stronger) {probability:.0%} after {head_to_head} direct votes).")


def promotion_matchups(*, project: Project, version_ids) -> dict[tuple[int, int], int]:
    """The matchups a promotion waits for, among ``version_ids``: where the project requires the arena,
    each version newer than the served one that passed the guard, whose run is over and that has not
    beaten the served one yet (as the "waiting for the arena" banner counts it, :func:`arena_verdict`).

    Returns ``{(lower id, higher id): direct votes still missing}`` (0: enough votes, not won yet);
    empty where the project does not require the arena or serves none of ``version_ids``.
    """
    served = project.served_version
    if not project.arena_required or served is None or served.pk not in set(version_ids):
        return {}
    candidates = (
        ModelVersion.objects.filter(pk__in=version_ids, number__gt=served.number, held_back_reason="")
        .exclude(produced_by__status__in=ACTIVE_STATUSES)
        .select_related("project")
    )
    against_served = direct_votes(project=project, version_id=served.pk)
    waiting = {}
    for candidate in candidates:
        missing = max(project.arena_min_votes - against_served[candidate.pk], 0)
        # Only a matchup with its votes can have been won: the (cached) fit is read for those alone.
        if missing or not arena_verdict(candidate=candidate, served=served).beats:
            waiting[(min(candidate.pk, served.pk), max(candidate.pk, served.pk))] = missing
    return waiting


def promotion_check_arena(sender, *, version: ModelVersion, served: ModelVersion, **kwargs) -> str:
    """Receiver of ``policies.signals.promotion_check``: "" unless the project requires the arena and it is not won."""
    project = Project.objects.get(pk=version.project_id)
    if not project.arena_required:
        return ""
    verdict = arena_verdict(candidate=version, served=served)
    return "" if verdict.beats else verdict.reason


def promotion_wait_arena(sender, *, version: ModelVersion, served: ModelVersion, **kwargs) -> dict | None:
    """Receiver of ``policies.signals.promotion_wait``: where the project requires the arena, the
    direct votes ``version`` has against ``served`` so far, the ``arena_min_votes`` needed, whether
    it has beaten it (:func:`arena_verdict`) and the verdict's sentence; None otherwise."""
    project = Project.objects.get(pk=version.project_id)
    if not project.arena_required:
        return None
    verdict = arena_verdict(candidate=version, served=served)
    return {
        "gate": "arena",
        "votes": verdict.head_to_head,
        "needed": project.arena_min_votes,
        "won": verdict.beats,
        "reason": verdict.reason,
    }


def arena_leaderboard_plot_spec(*, board: Leaderboard) -> tuple[str, dict]:
    """The leaderboard as an ``intervals`` plot: each version's score with its 95% interval."""
    rows = list(reversed(board.rows))  # best at the top of a horizontal plot
    return "intervals", {
        "labels": [f"v{r.version.number}{' (served)' if r.served else ''}" for r in rows],
        "values": [round(r.score, 2) for r in rows],
        "low": [round(r.low, 2) for r in rows],
        "high": [round(r.high, 2) for r in rows],
        "title": f"Arena: Bradley–Terry score per version ({board.n_votes} votes)",
        "xlabel": "score (Elo scale), 95% interval",
    }


def arena_can_undo(*, project: Project, voter, now=None) -> bool:
    """Whether the voter has a vote recent enough to undo."""
    now = now or timezone.now()
    return (
        ArenaVote.objects.filter(project=project, voter=voter, undone_at__isnull=True, voted_at__gte=now - UNDO_WINDOW)
        .exclude(choice="")
        .exists()
    )
