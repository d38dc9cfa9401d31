"""Reads for annotation: the pool, the queue, an annotator's progress, undo, staff figures."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, timedelta

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from webapp.policies.models import ModelVersion, Project, RatingMode

from .models import Comparison, Completion, GoldItem, Lease, Pair, Prompt, RankGroup, Ranking, Rating, RatingRevision, Skip

UNDO_WINDOW = timedelta(minutes=10)


def rateable_completions(*, project: Project) -> QuerySet[Completion]:
    """The completions that are items in this project's rating mode.

    Pairwise: the anchors (``completion_a``) of pairs; ranking: the anchors of
    rank groups; otherwise every completion. Held-out prompts are never items.
    """
    qs = Completion.objects.filter(project=project, prompt__held_out=False)
    if project.rating_mode == RatingMode.PAIRWISE:
        qs = qs.filter(pair_as_a__isnull=False)
    elif project.rating_mode == RatingMode.RANKING:
        qs = qs.filter(rank_group_as_anchor__isnull=False)
    return qs


def open_completions(*, project: Project) -> QuerySet[Completion]:
    """Items that still need ratings (fewer than ``ratings_per_item`` so far), not retired, not gold items."""
    return (
        rateable_completions(project=project)
        .filter(retired_at__isnull=True, gold__isnull=True)
        .annotate(rating_count=Count("ratings", distinct=True))
        .filter(rating_count__lt=project.ratings_per_item)
    )


def training_prompts_exist(*, project: Project) -> bool:
    """Whether the project has a prompt the pool can sample for annotators (not held out, not from
    production); without one nothing will ever be ready to rate."""
    return Prompt.objects.filter(project=project, held_out=False, from_production=False).exists()


def pool_size(*, project: Project, version_id: int | None = None) -> int:
    """Open completions sampled from the served version (or from ``version_id``): what the pool
    refill keeps full.

    Pairwise items count as the two completions they are, ranking items as their k.
    """
    version_id = project.served_version_id if version_id is None else version_id
    n = open_completions(project=project).filter(model_version_id=version_id).count()
    if project.rating_mode == RatingMode.PAIRWISE:
        return 2 * n
    if project.rating_mode == RatingMode.RANKING:
        return project.rank_k * n
    return n


def pool_free(*, project: Project, version_id: int | None = None) -> int:
    """The part of :func:`pool_size` nobody holds: open items of the served version (or of
    ``version_id``) with a rating slot still untaken, in the same units (pairwise items count
    two, ranking items their k). A slot is taken by a rating or by a lease that is rated or has
    not expired. This is what the low-water mark and the refill's deficit count: items an
    annotator holds are not ready for the next one, so with as many annotators as the mark
    the queue would otherwise run dry before a refill was even asked for.
    """
    version_id = project.served_version_id if version_id is None else version_id
    taken = Count("leases", filter=Q(leases__fulfilled=True) | Q(leases__expires_at__gt=timezone.now()), distinct=True)
    n = (
        open_completions(project=project)
        .filter(model_version_id=version_id)
        .annotate(slots_taken=taken)
        .filter(slots_taken__lt=project.ratings_per_item)
        .count()
    )
    if project.rating_mode == RatingMode.PAIRWISE:
        return 2 * n
    if project.rating_mode == RatingMode.RANKING:
        return project.rank_k * n
    return n


def pool_target_for(*, project: Project, version_id: int | None) -> int:
    """Free completions (:func:`pool_free`) the pool refill keeps for ``version_id``: ``pool_target`` for the served
    version; for the shadow candidate (``Project.shadow_version``) ``shadow_share`` of it,
    rounded up (0 with a share of 0); 0 for any other version."""
    if version_id is not None and version_id == project.served_version_id:
        return project.pool_target
    if version_id is not None and version_id == project.shadow_version_id:
        return math.ceil(project.shadow_share * project.pool_target)
    return 0


def pool_needs_refill(*, project: Project) -> bool:
    """Whether the served version's free items (:func:`pool_free`: open and not held by a
    lease) fell below the low-water mark (``Project.pool_low_water``, at most ``pool_target``):
    the moment to ask for a refill, early enough that the next generation batch lands before
    the pool runs dry. Also when the shadow candidate's free items fell to half their target
    or fewer."""
    if pool_free(project=project) < min(project.pool_low_water, project.pool_target):
        return True
    shadow_target = pool_target_for(project=project, version_id=project.shadow_version_id)
    return shadow_target > 0 and 2 * pool_free(project=project, version_id=project.shadow_version_id) <= shadow_target


# --- The annotator's hot path ---------------------------------------------------------
#
# The next card, the submit and the progress line run on every request an annotator makes
# (about one a second each, all day). Each read below is one hand-written SQL statement,
# valid on PostgreSQL and SQLite, instead of an ORM query: building and compiling the
# equivalent querysets cost 2-5 ms of Python per request on a small server, several
# times what the database spends answering them. The tests in
# ``tests/webapp/test_annotation_services.py`` and ``test_annotation_pages.py`` pin
# what they return on both databases.

_T = {
    "completion": Completion._meta.db_table,
    "prompt": Prompt._meta.db_table,
    "version": ModelVersion._meta.db_table,
    "lease": Lease._meta.db_table,
    "rating": Rating._meta.db_table,
    "skip": Skip._meta.db_table,
    "pair": Pair._meta.db_table,
    "comparison": Comparison._meta.db_table,
    "rankgroup": RankGroup._meta.db_table,
    "gold": GoldItem._meta.db_table,
    "ranking": Ranking._meta.db_table,
}

# An item of the project in its mode, that still needs ratings (by the counter the
# services keep), not retired, that this annotator has neither rated nor skipped; of any
# version but the shadow candidate (whose items only the shadow queue offers). Which older
# versions' items are offered is decided by retiring them (``services.completions_retire_older``):
# after a serve they stay until the served version's first batch lands, with
# ``drain_old_versions`` for good. The partial index ``completion_unretired`` holds just
# these rows, so the statements walk the open items, not every leftover ever retired.
_OPEN_ITEM_FOR_ANNOTATOR = """
    c.project_id = %(project)s AND NOT p.held_out AND c.n_ratings < {per_item:d} {pairwise}
    AND c.retired_at IS NULL {not_shadow}
    AND NOT EXISTS (SELECT 1 FROM {gold} gi WHERE gi.completion_id = c.id)
    AND NOT EXISTS (SELECT 1 FROM {rating} r WHERE r.completion_id = c.id AND r.annotator_id = %(annotator)s)
    AND NOT EXISTS (SELECT 1 FROM {skip} s WHERE s.completion_id = c.id AND s.annotator_id = %(annotator)s)
"""
_PAIRWISE_ONLY = "AND EXISTS (SELECT 1 FROM {pair} pr WHERE pr.completion_a_id = c.id)"
_RANKING_ONLY = "AND EXISTS (SELECT 1 FROM {rankgroup} g WHERE g.anchor_id = c.id)"
_ITEMS_OF_MODE = {RatingMode.PAIRWISE: _PAIRWISE_ONLY, RatingMode.RANKING: _RANKING_ONLY}


def _open_item_sql(project: Project, *, with_shadow: bool = False) -> str:
    """``with_shadow``: items of the shadow candidate (``Project.shadow_version``) count as offered too."""
    pairwise = _ITEMS_OF_MODE.get(project.rating_mode, "")
    not_shadow = ""
    if project.shadow_version_id is not None and not with_shadow:
        not_shadow = f"AND c.model_version_id <> {int(project.shadow_version_id):d}"
    return _OPEN_ITEM_FOR_ANNOTATOR.format(
        pairwise=pairwise.format(**_T), per_item=project.ratings_per_item, not_shadow=not_shadow, **_T
    )


_QUEUE_SQL = """
SELECT c.id, c.rm_uncertainty FROM {completion} c JOIN {prompt} p ON p.id = c.prompt_id
WHERE {version_group} AND {open_item}
    AND NOT EXISTS (SELECT 1 FROM {lease} l WHERE l.completion_id = c.id AND l.annotator_id = %(annotator)s)
    AND (SELECT COUNT(*) FROM {lease} l
         WHERE l.completion_id = c.id AND (l.fulfilled OR l.expires_at > %(now)s)) < {per_item:d}
    AND (SELECT COUNT(*) FROM {rating} r WHERE r.completion_id = c.id) < {per_item:d}
ORDER BY {order}{limit_clause}
"""
# Queue orders (``Lease.chosen_by`` values). "active": the largest ensemble spread first, items
# the reward model has not scored after them in queue order (NULLS LAST written so SQLite and
# PostgreSQL agree). "uniform": every open item in queue order, then a uniform draw among them in
# Python with the caller's generator (SQL's RANDOM() cannot be seeded on SQLite, so a seeded queue,
# as the learning benchmark's, would not repeat; the statement reads every open item either way).
# "shadow": the shadow candidate's items (``Project.shadow_version``) in queue order.
QUEUE_ORDERS = {
    "fifo": "c.n_ratings DESC, c.id",
    "active": "CASE WHEN c.rm_uncertainty IS NULL THEN 1 ELSE 0 END, c.rm_uncertainty DESC, c.n_ratings DESC, c.id",
    "uniform": "c.n_ratings DESC, c.id",
    "shadow": "c.n_ratings DESC, c.id",
}
# The ratings per item and the LIMIT (integers from the project and the code) are
# written into the statements, so the planner sees their values.


def _db_datetime(value):
    """A datetime as the backend compares it (UTC text on SQLite, as is on PostgreSQL)."""
    return connection.ops.adapt_datetimefield_value(value)


def aware_datetime(value):
    """A datetime read by raw SQL, aware (SQLite hands back naive UTC, or text where it has no column type)."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and timezone.is_naive(value):
        return timezone.make_aware(value, UTC)
    return value


def queue_candidate_ids(
    *, project: Project, annotator, limit: int = 10, order: str = "fifo", rng: random.Random | None = None
) -> list[int]:
    """Ids of the next ``limit`` items this annotator may be offered, in the order they are offered.

    See :func:`queue_candidates`.
    """
    return [cid for cid, _ in queue_candidates(project=project, annotator=annotator, limit=limit, order=order, rng=rng)]


def queue_candidates(
    *, project: Project, annotator, limit: int = 10, order: str = "fifo", rng: random.Random | None = None
) -> list[tuple[int, float | None]]:
    """``(id, rm_uncertainty)`` of the next ``limit`` items this annotator may be offered, in order.

    ``order`` (a key of :data:`QUEUE_ORDERS`): ``"fifo"`` is the queue order described
    below; ``"active"`` puts the largest reward-model uncertainty (``Completion.rm_uncertainty``,
    written by the rewards app) first and unscored items after them in queue order;
    ``"uniform"`` draws the items uniformly at random with ``rng`` (default: a fresh, unseeded
    ``random.Random``; the same seeded generator over the same queue draws the same items).
    The version groups apply to these three.
    ``"shadow"`` offers only items of the project's shadow candidate (``Project.shadow_version``,
    a version not served yet), in queue order; none when the project has none.

    The served version's items; after them, older versions' items not retired: right
    after a serve, until the served version's first pool batch lands and retires them,
    so nobody meets an empty queue in between; for good while the project drains older
    versions (``Project.drain_old_versions``). See ``services.completions_retire_older``.
    The shadow candidate's items are offered only by ``"shadow"``. Within each, items that
    already have ratings first (finishing items before starting new ones),
    then oldest first. Excludes held-out prompts, what the annotator rated,
    skipped or holds, and items whose every slot is taken by a live or
    fulfilled lease or by a rating. ``Completion.n_ratings`` (kept by the
    services) lets the ``completion_queue_order`` index skip finished items;
    the real ratings and leases are checked per candidate with correlated
    subqueries (no GROUP BY, so the LIMIT stops the walk early). Each version
    group is a separate statement so the walk follows the index in order.
    """
    if order not in QUEUE_ORDERS:
        raise ValueError(f"order must be one of {sorted(QUEUE_ORDERS)}, got {order!r}")
    params = {
        "project": project.pk,
        "version": project.served_version_id,
        "annotator": annotator.pk,
        "now": _db_datetime(timezone.now()),
    }
    open_item = _open_item_sql(project, with_shadow=order == "shadow")
    if order == "shadow":
        if project.shadow_version_id is None:
            return []
        params["version"] = project.shadow_version_id
        version_groups = ("c.model_version_id = %(version)s",)
    elif project.served_version_id is not None:
        version_groups = ("c.model_version_id = %(version)s", "c.model_version_id <> %(version)s")
    else:  # a project being set up: every version is "older"
        version_groups = ("1 = 1",)
    uniform = order == "uniform"
    ids = []
    with connection.cursor() as cursor:
        for version_group in version_groups:
            sql = _QUEUE_SQL.format(
                version_group=version_group,
                open_item=open_item,
                per_item=project.ratings_per_item,
                limit_clause="" if uniform else f"\nLIMIT {limit - len(ids):d}",
                order=QUEUE_ORDERS[order],
                **_T,
            )
            cursor.execute(sql, params)
            rows = [(row[0], row[1]) for row in cursor.fetchall()]
            if uniform:
                rows = (rng or random.Random()).sample(rows, min(limit - len(ids), len(rows)))
            ids += rows
            if len(ids) == limit:
                break
    return ids


_LEASE_HELD_SQL = """
SELECT CASE WHEN l.rating_mode = %(mode)s{pair_only}{rank_only} THEN 1 ELSE 0 END AS of_mode,
       l.id, l.completion_id, l.annotator_id, l.slot, l.expires_at, l.a_on_left, l.fulfilled, l.rating_mode, l.created_at,
       c.project_id, c.prompt_id, c.model_version_id, c.text, c.finished, c.n_ratings, c.created_at,
       p.project_id, p.text, p.held_out, v.project_id, v.number{pair_columns}
FROM {lease} l
JOIN {completion} c ON c.id = l.completion_id
JOIN {prompt} p ON p.id = c.prompt_id
JOIN {version} v ON v.id = c.model_version_id{pair_joins}
WHERE l.annotator_id = %(annotator)s AND c.project_id = %(project)s AND NOT l.fulfilled AND l.expires_at > %(now)s
ORDER BY of_mode DESC, l.id
LIMIT 1
"""
# A lease of another mode sorts last and is told apart by ``of_mode``, in the same statement: finding one
# costs the annotator's next item no statement of its own (``tests/webapp/test_annotation_query_budget.py``).
_LEASE_HELD_PAIR_COLUMNS = ", pr.id, pr.completion_b_id, b.prompt_id, b.model_version_id, b.text, b.finished, b.n_ratings"
_LEASE_HELD_PAIR_JOINS = """
LEFT JOIN {pair} pr ON pr.completion_a_id = c.id
LEFT JOIN {completion} b ON b.id = pr.completion_b_id"""
_LEASE_FIELDS = ["id", "completion_id", "annotator_id", "slot", "expires_at", "a_on_left", "fulfilled", "rating_mode", "created_at"]
# Completions are loaded without their token ids and log-probabilities (read only by training).
_CARD_COMPLETION_FIELDS = ["id", "project_id", "prompt_id", "model_version_id", "text", "finished", "n_ratings"]


def lease_held(*, project: Project, annotator) -> Lease | None:
    """The annotator's live, unrated lease in this project taken under its current rating mode, if any
    (a reload keeps the same item). After staff changed the mode, a lease of the old one
    (``Lease.rating_mode``) is not returned (``services.lease_next`` gives it back); nor, in pairwise
    or ranking mode, a lease on a single completion. See :func:`lease_held_or_off_mode`.
    """
    return lease_held_or_off_mode(project=project, annotator=annotator)[0]


def lease_held_or_off_mode(*, project: Project, annotator) -> tuple[Lease | None, bool]:
    """``(lease, off_mode)``: the lease :func:`lease_held` returns (None: none), and whether, holding none,
    the annotator holds a live, unrated lease in this project that is not of its current rating mode
    (:func:`leases_off_mode`), for ``services.lease_next`` to give back.

    Comes with what the card shows, in one statement: ``lease.completion``
    with its ``prompt`` and ``model_version`` (only ``number``), and in
    pairwise mode its pair (``completion.pair_as_a`` and the pair's
    ``completion_b``). Token ids and log-probabilities are not loaded
    (deferred: reading them costs a query). The card's progress line is read on its own
    (:func:`annotator_progress`): read with this statement it cost PostgreSQL more planning
    and execution than the two statements apart, also where no lease is held
    (``bench/annotate_hot_queries.py``).
    """
    pairwise = project.rating_mode == RatingMode.PAIRWISE
    ranking = project.rating_mode == RatingMode.RANKING
    sql = _LEASE_HELD_SQL.format(
        pair_columns=_LEASE_HELD_PAIR_COLUMNS if pairwise else "",
        pair_joins=_LEASE_HELD_PAIR_JOINS.format(**_T) if pairwise else "",
        pair_only=" AND pr.id IS NOT NULL" if pairwise else "",
        rank_only=" " + _RANKING_ONLY.format(**_T) if ranking else "",
        **_T,
    )
    params = {
        "annotator": annotator.pk, "project": project.pk, "now": _db_datetime(timezone.now()), "mode": project.rating_mode
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None or not row[0]:
        return None, row is not None
    db = connection.alias
    (_, lease_id, completion_id, annotator_id, slot, expires_at, a_on_left, fulfilled, rating_mode, leased_at,
     project_id, prompt_id, version_id, text, finished, n_ratings, created_at,
     prompt_project_id, prompt_text, held_out, version_project_id, version_number, *pair_row) = row  # fmt: skip
    lease = Lease.from_db(
        db, _LEASE_FIELDS,
        [lease_id, completion_id, annotator_id, slot, aware_datetime(expires_at), a_on_left, fulfilled, rating_mode,
         aware_datetime(leased_at)],
    )  # fmt: skip
    completion = Completion.from_db(
        db, [*_CARD_COMPLETION_FIELDS, "created_at"],
        [completion_id, project_id, prompt_id, version_id, text, finished, n_ratings, aware_datetime(created_at)],
    )  # fmt: skip
    completion.project = project
    completion.prompt = Prompt.from_db(db, ["id", "project_id", "text", "held_out"], [prompt_id, prompt_project_id, prompt_text, held_out])
    completion.model_version = ModelVersion.from_db(db, ["id", "project_id", "number"], [version_id, version_project_id, version_number])
    if pairwise:
        pair_id, b_id, b_prompt_id, b_version_id, b_text, b_finished, b_n_ratings = pair_row
        if pair_id is None:
            Completion.pair_as_a.related.set_cached_value(completion, None)
        else:
            pair = Pair.from_db(db, ["id", "project_id", "completion_a_id", "completion_b_id"], [pair_id, project_id, completion_id, b_id])
            pair.completion_b = Completion.from_db(
                db, _CARD_COMPLETION_FIELDS, [b_id, project_id, b_prompt_id, b_version_id, b_text, b_finished, b_n_ratings]
            )
            completion.pair_as_a = pair
    if ranking:
        completion.ranked_members = rank_members_shown(completion=completion, lease_id=lease_id)
    lease.completion = completion
    return lease, False


_COMPLETION_OF_PROJECT_SQL = """
SELECT id, project_id, prompt_id, model_version_id, text, finished, n_ratings
FROM {completion} WHERE id = %(completion)s AND project_id = %(project)s
"""


def completion_of_project(*, project: Project, completion_id: int) -> Completion | None:
    """Completion ``completion_id`` if it belongs to ``project``, else None; the card's fields only
    (token ids and log-probabilities are deferred, as in :func:`lease_held`). One statement."""
    with connection.cursor() as cursor:
        cursor.execute(_COMPLETION_OF_PROJECT_SQL.format(**_T), {"completion": completion_id, "project": project.pk})
        row = cursor.fetchone()
    if row is None:
        return None
    completion_id, project_id, prompt_id, version_id, text, finished, n_ratings = row
    completion = Completion.from_db(
        connection.alias, _CARD_COMPLETION_FIELDS,
        [completion_id, project_id, prompt_id, version_id, text, bool(finished), n_ratings],
    )  # fmt: skip
    completion.project = project
    return completion


def rank_members_shown(*, completion: Completion, lease_id: int) -> list[Completion]:
    """The completions of the rank group ``completion`` anchors, in the order this lease shows
    them (top first): shuffled once per lease (seeded by its id), so a reload shows the same
    order and each annotator sees another. Card fields only."""
    members = list(
        Completion.objects.filter(rank_group__anchor_id=completion.pk).only(*_CARD_COMPLETION_FIELDS).order_by("id")
    )
    random.Random(lease_id).shuffle(members)
    return members


_ITEM_STATE_SQL = """
SELECT p.held_out, CASE WHEN {open_item} THEN 1 ELSE 0 END
FROM {completion} c JOIN {prompt} p ON p.id = c.prompt_id
WHERE c.id = %(completion)s
"""


def item_state_for(*, project: Project, annotator, completion_id: int) -> tuple[bool, bool]:
    """``(held_out, open)`` for one item: whether its prompt is held out, and whether this
    annotator's queue may offer it (the queue's own condition: the project's item in
    its mode, still needing ratings, not retired, neither rated nor skipped by them, of
    any version the queue or the shadow queue offers; held-out prompts never are). Whether a slot is free
    is left to the lease insert. One statement.
    """
    sql = _ITEM_STATE_SQL.format(open_item=_open_item_sql(project, with_shadow=True), **_T)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"project": project.pk, "annotator": annotator.pk, "completion": completion_id})
        row = cursor.fetchone()
    if row is None:
        return False, False
    return bool(row[0]), bool(row[1])


# Modes whose items are not single completions (pairs, rank groups).
MODES_WITH_OFF_MODE_ITEMS = (RatingMode.PAIRWISE, RatingMode.RANKING)


def leases_off_mode(*, project: Project, annotator) -> QuerySet[Lease]:
    """The annotator's unrated leases in the project taken under another rating mode than its current one
    (``Lease.rating_mode``: staff changed the mode since), or on items that are not items of the current
    mode (a single completion where pairs or rank groups are rated)."""
    leases = Lease.objects.filter(annotator=annotator, fulfilled=False, completion__project=project)
    off_mode = ~Q(rating_mode=project.rating_mode)
    if project.rating_mode == RatingMode.PAIRWISE:
        off_mode |= Q(completion__pair_as_a__isnull=True)
    elif project.rating_mode == RatingMode.RANKING:
        off_mode |= Q(completion__rank_group_as_anchor__isnull=True)
    return leases.filter(off_mode)


def pair_of(completion: Completion) -> Pair | None:
    """The pair whose anchor is ``completion``, or None."""
    try:
        return completion.pair_as_a
    except Pair.DoesNotExist:
        return None


def trainable_ratings(*, project: Project) -> QuerySet[Rating]:
    """The ratings anything may learn from: training runs and reward-model fits alike.

    Never ratings of held-out prompts: they judge versions (the promotion guard); a
    rating of one (stored before judgments were checked, or by hand) is never trained
    on. Nor a judgment of a gold item (it checks the annotator, and every annotator
    answers it), whatever the mode: a gold completion (Likert, thumbs, rubric), a pair
    whose completion A is gold (pairwise), a rank group whose anchor is gold (ranking).
    """
    return (
        Rating.objects.filter(completion__project=project, completion__prompt__held_out=False)
        .exclude(completion__gold__isnull=False)
        .exclude(comparison__pair__completion_a__gold__isnull=False)
        .exclude(ranking__group__anchor__gold__isnull=False)
    )


def new_ratings(*, project: Project) -> QuerySet[Rating]:
    """:func:`trainable_ratings` not yet used by a succeeded training run."""
    return trainable_ratings(project=project).exclude(training_runs__status="succeeded")


def rank_group_of(completion: Completion) -> RankGroup | None:
    """The rank group whose anchor is ``completion``, or None."""
    try:
        return completion.rank_group_as_anchor
    except RankGroup.DoesNotExist:
        return None


def judgments_of_each_kind(*, project: Project, annotator) -> dict[str, QuerySet]:
    """An annotator's judgments in the project, one queryset per kind, whatever the current mode:
    ``"pairwise"`` decisions, ``"ranking"`` rankings, ``"single"`` single-completion ratings
    (Likert, thumbs, rubric). Only those given as an annotator: feedback the person sent on a
    production answer with their API token (source production) is changed through the feedback
    API, never undone or listed here."""
    production = Rating.Source.PRODUCTION
    return {
        "pairwise": Comparison.objects.filter(pair__project=project, annotator=annotator).exclude(ratings__source=production),
        "ranking": Ranking.objects.filter(group__project=project, annotator=annotator),
        "single": Rating.objects.filter(
            completion__project=project, annotator=annotator, comparison__isnull=True, ranking__isnull=True
        ).exclude(source=production),
    }


def last_skip(*, project: Project, annotator, now=None) -> Skip | None:
    """The annotator's most recent skip in the project if it is still undoable (younger than
    ``UNDO_WINDOW``, as a judgment; see :func:`last_judgment`)."""
    since = (now or timezone.now()) - UNDO_WINDOW
    return (
        Skip.objects.filter(completion__project=project, annotator=annotator, created_at__gt=since)
        .order_by("-created_at", "-id")
        .first()
    )


def judgments_by(*, project: Project, annotator) -> QuerySet[Rating] | QuerySet[Comparison] | QuerySet[Ranking]:
    """An annotator's judgments in the project's rating mode: pairwise decisions, rankings, or
    single-completion ratings."""
    kind = str(project.rating_mode) if project.rating_mode in MODES_WITH_OFF_MODE_ITEMS else "single"
    return judgments_of_each_kind(project=project, annotator=annotator)[kind]


def last_judgment(*, project: Project, annotator, now=None) -> Rating | Comparison | Ranking | None:
    """The annotator's most recent judgment in the project if it is still undoable (younger than 10 minutes).

    The most recent of every kind (pairwise decision, ranking, single-completion rating), not
    only the current rating mode's: after a mode switch the newest judgment may be of the old
    mode, and undo must not reach past it to an older one of the current mode
    (:func:`webapp.annotation.services.judgment_undo` refuses it instead).
    """
    since = (now or timezone.now()) - UNDO_WINDOW
    kinds = judgments_of_each_kind(project=project, annotator=annotator).values()
    latest = [j for j in (q.filter(created_at__gt=since).order_by("-created_at", "-id").first() for q in kinds) if j]
    return max(latest, key=lambda j: j.created_at, default=None)


QUEUE_COUNT_CAP = 100  # "100+" tells a person as much as "500+", for a fifth of the read

# The waiting count leaves out one item when the annotator holds a card (any live lease in the
# project), not the held item itself: a shadow (candidate) or gold card is never among the counted
# items, so leaving out only the held item would make such a card's count one higher than a served
# card's and tell the annotator which card it is (tests/webapp/test_shadow_queue.py).
_PROGRESS_SQL = """SELECT (SELECT COUNT(*) FROM (
        SELECT 1 FROM {completion} c JOIN {prompt} p ON p.id = c.prompt_id WHERE {open_item} LIMIT {cap:d}
    ) waiting) - (SELECT COUNT(*) FROM (
        SELECT 1 FROM {lease} hl JOIN {completion} hc ON hc.id = hl.completion_id
        WHERE hc.project_id = %(project)s AND hl.annotator_id = %(annotator)s
            AND NOT hl.fulfilled AND hl.expires_at > %(now)s LIMIT 1
    ) held),
    (SELECT COUNT(*) FROM {judged_single} AND j.created_at >= %(midnight)s)
        + (SELECT COUNT(*) FROM {judged_pairwise} AND j.created_at >= %(midnight)s)
        + (SELECT COUNT(*) FROM {judged_ranking} AND j.created_at >= %(midnight)s),
    (SELECT COUNT(*) FROM (SELECT 1 FROM {judgments} AND j.created_at > %(undo_since)s LIMIT 1) undoable)
        + (SELECT COUNT(*) FROM (
            SELECT 1 FROM {skip} s JOIN {completion} sc ON sc.id = s.completion_id
            WHERE sc.project_id = %(project)s AND s.annotator_id = %(annotator)s AND s.created_at > %(undo_since)s LIMIT 1
        ) undoable_skip)"""
_JUDGMENTS_SQL = {  # the annotator's judgments in the project, as ``j``; as judgments_of_each_kind, no production feedback
    "pairwise": """{comparison} j JOIN {pair} pr ON pr.id = j.pair_id
        WHERE pr.project_id = %(project)s AND j.annotator_id = %(annotator)s
            AND NOT EXISTS (SELECT 1 FROM {rating} jr WHERE jr.comparison_id = j.id AND jr.source = %(production)s)""",
    "ranking": """{ranking} j JOIN {rankgroup} g ON g.id = j.group_id
        WHERE g.project_id = %(project)s AND j.annotator_id = %(annotator)s""",
    "single": """{rating} j JOIN {completion} jc ON jc.id = j.completion_id
        WHERE jc.project_id = %(project)s AND j.annotator_id = %(annotator)s
            AND j.comparison_id IS NULL AND j.ranking_id IS NULL AND j.source <> %(production)s""",
}


def annotator_progress(*, project: Project, annotator) -> dict:
    """What the annotator sees: judgments today and the items still waiting for them.

    ``queue`` counts items that need ratings and that this annotator has
    neither rated nor skipped, after the one on their screen: while they hold
    a card (a live lease not yet fulfilled) one item is left out, so 0 means
    nothing more waits once the card shown is rated (the card says "after this
    one"); a shadow or gold card, which is not among the counted items, leaves
    one out too, so the count does not tell such a card from a served one.
    It is exact up to ``QUEUE_COUNT_CAP`` (``queue_capped`` says when more
    wait), so a long queue costs a bounded read. ``today``: their judgments since local
    midnight in every mode (a mode switch does not reset the day); ``can_undo``:
    they have a judgment in the current mode, or a skip, younger than the undo window.
    Both leave out feedback sent on production answers (source production), as
    :func:`judgments_of_each_kind` does.
    One statement.
    """
    now = timezone.localtime()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    judgments = _JUDGMENTS_SQL.get(project.rating_mode, _JUDGMENTS_SQL["single"])
    sql = _PROGRESS_SQL.format(
        open_item=_open_item_sql(project), judgments=judgments.format(**_T), cap=QUEUE_COUNT_CAP + 2,
        **{f"judged_{kind}": text.format(**_T) for kind, text in _JUDGMENTS_SQL.items()}, **_T
    )
    params = {
        "project": project.pk,
        "annotator": annotator.pk,
        "midnight": _db_datetime(midnight),
        "undo_since": _db_datetime(now - UNDO_WINDOW),
        "now": _db_datetime(now),
        "production": Rating.Source.PRODUCTION.value,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        waiting, today, undoable = cursor.fetchone()
    return {
        "today": today,
        "queue": max(0, min(waiting, QUEUE_COUNT_CAP)),
        "queue_capped": waiting > QUEUE_COUNT_CAP,
        "can_undo": undoable > 0,
    }


SAMPLING_DESCRIPTION = "temperature 1, full distribution (no top-p, top-k or repetition penalty)"
# What ``services.completion_pool_refill`` samples with (``pgcore.rollout.generate``); the
# length cap is the project's ``max_new_tokens`` and each completion's own length is shown.


def recent_judgments(*, project: Project, annotator, limit: int = 50) -> list[dict]:
    """The annotator's last ``limit`` judgments in the project, of every mode, newest first, with
    what the card hid while they rated: the version that wrote each completion and how it was sampled.

    A project's mode can change mid-way; each judgment is listed in the mode it was given in
    (its kind of row), not the project's current one. A judgment the annotator undid is listed
    too, from its :class:`RatingRevision`, at the time it was given and marked with when it was undone.

    Each row: ``when`` (datetime), ``undone`` (datetime it was undone, else None),
    ``mode`` (the :class:`RatingMode` label it was given in),
    ``gold`` (it judged a gold item), ``judgment`` (text: "4", "thumbs up", "A is better",
    "ranked best to worst"...), ``criteria`` (rubric: list of ``name``, ``weight``, ``score``;
    else empty), ``comment``, ``prompt`` (text), ``outputs`` (list of dicts: ``label`` ("" or
    "A"/"B", "#1"...), ``text``, ``version`` (number), ``tokens`` (count), ``finished`` (ended at
    EOS), ``retired`` (bool)). Rankings list their outputs best first.
    """

    def output(completion, label=""):
        return {
            "label": label,
            "text": completion.text,
            "version": completion.model_version.number,
            "tokens": len(completion.token_ids),
            "finished": completion.finished,
            "retired": completion.retired_at is not None,
        }

    def row(*, when, mode, judgment, comment, prompt, outputs, item_id, criteria=(), undone=None):
        return {
            "when": when, "undone": undone, "mode": RatingMode(mode).label, "item_id": item_id, "judgment": judgment,
            "criteria": list(criteria), "comment": comment, "prompt": prompt, "outputs": outputs,
        }

    def ranked(order):
        members = Completion.objects.select_related("model_version").in_bulk(order)  # k per row, `limit` rows at most
        return [output(members[cid], f"#{place}") for place, cid in enumerate(order, 1)]

    def single_mode(judgment):
        return RatingMode.THUMBS if judgment.thumbs_up is not None else RatingMode.RUBRIC if judgment.criteria is not None else RatingMode.LIKERT

    rows = []
    kinds = judgments_of_each_kind(project=project, annotator=annotator)
    comparisons = (
        kinds["pairwise"]
        .select_related("pair__completion_a__prompt", "pair__completion_a__model_version", "pair__completion_b__model_version")
        .order_by("-created_at", "-id")[:limit]
    )
    for c in comparisons:
        a, b = c.pair.completion_a, c.pair.completion_b
        rows.append(
            row(when=c.created_at, mode=RatingMode.PAIRWISE, judgment=c.get_choice_display(), comment=c.comment,
                prompt=a.prompt.text, outputs=[output(a, "A"), output(b, "B")], item_id=a.pk)
        )
    rankings = (
        kinds["ranking"]
        .select_related("group__anchor__prompt")
        .order_by("-created_at", "-id")[:limit]
    )
    for r in rankings:
        rows.append(
            row(when=r.created_at, mode=RatingMode.RANKING, judgment="ranked best to worst", comment=r.comment,
                prompt=r.group.anchor.prompt.text, item_id=r.group.anchor_id, outputs=ranked(r.order))
        )
    ratings = (
        kinds["single"]
        .select_related("completion__prompt", "completion__model_version")
        .order_by("-created_at", "-id")[:limit]
    )
    for r in ratings:
        rows.append(
            row(when=r.created_at, mode=single_mode(r), judgment=r.value_label, comment=r.comment,
                prompt=r.completion.prompt.text, outputs=[output(r.completion)], item_id=r.completion_id,
                criteria=r.criteria or ())
        )
    revisions = (
        RatingRevision.objects.filter(completion__project=project, annotator=annotator)
        .select_related("completion__prompt", "completion__model_version", "pair__completion_b__model_version")
        .order_by("-rated_at", "-id")[:limit]
    )
    for v in revisions:  # the anchor is the pair's completion A, the ranking's anchor, or the rated completion
        common = {"when": v.rated_at, "undone": v.revised_at, "comment": v.comment, "prompt": v.completion.prompt.text,
                  "item_id": v.completion_id}
        if v.pair_id is not None:
            rows.append(row(mode=RatingMode.PAIRWISE, judgment=v.get_choice_display(),
                            outputs=[output(v.completion, "A"), output(v.pair.completion_b, "B")], **common))
        elif v.order is not None:
            rows.append(row(mode=RatingMode.RANKING, judgment="ranked best to worst", outputs=ranked(v.order), **common))
        else:
            rows.append(row(mode=single_mode(v), judgment=Rating.label_of(score=v.score, thumbs_up=v.thumbs_up,
                            criteria=v.criteria), outputs=[output(v.completion)], criteria=v.criteria or (), **common))
    rows.sort(key=lambda r: r["when"], reverse=True)  # stable: within one instant, each kind keeps its newest-first order
    rows = rows[:limit]
    gold = set(GoldItem.objects.filter(project=project, completion_id__in=[r["item_id"] for r in rows]).values_list("completion_id", flat=True))
    for r in rows:
        r["gold"] = r.pop("item_id") in gold
    return rows


def version_levels(*, project: Project) -> dict[int, list[float]]:
    """Per model version id: the levels (:func:`.judgments.level`) of its completions' ratings.

    Only ratings of the project's current kind count: thumbs in a thumbs project (up 1,
    down 0), Likert scores otherwise (1–5), so a project whose mode changed never mixes the
    scales. Pairwise decisions say nothing about a version's level and are left out.
    Read by ``webapp.policies.selectors.version_rating_stats`` (plugged in at start).
    """
    from collections import defaultdict

    from . import judgments

    thumbs = project.rating_mode == RatingMode.THUMBS
    rows = Rating.objects.filter(completion__project=project).values_list(
        "completion__model_version_id", "score", "thumbs_up"
    )
    values: dict[int, list[float]] = defaultdict(list)
    for version_id, score, thumbs_up in rows:
        value = judgments.level(score=None, thumbs_up=thumbs_up) if thumbs else judgments.level(score=score, thumbs_up=None)
        if value is not None:
            values[version_id].append(value)
    return values


# --- Gold items ---------------------------------------------------------------------------

_GOLD_CANDIDATES_SQL = """
SELECT c.id FROM {gold} gi
JOIN {completion} c ON c.id = gi.completion_id
JOIN {prompt} p ON p.id = c.prompt_id
WHERE gi.project_id = %(project)s AND NOT p.held_out {items_of_mode}
    AND NOT EXISTS (SELECT 1 FROM {rating} r WHERE r.completion_id = c.id AND r.annotator_id = %(annotator)s)
    AND NOT EXISTS (SELECT 1 FROM {skip} s WHERE s.completion_id = c.id AND s.annotator_id = %(annotator)s)
    AND NOT EXISTS (SELECT 1 FROM {lease} l WHERE l.completion_id = c.id AND l.annotator_id = %(annotator)s)
ORDER BY c.id
LIMIT {limit:d}
"""


def gold_candidate_ids(*, project: Project, annotator, limit: int = 5) -> list[int]:
    """Gold items of the project's rating mode this annotator has not judged, skipped or been
    leased yet, oldest first. Any number of annotators may answer one gold item."""
    sql = _GOLD_CANDIDATES_SQL.format(
        items_of_mode=_ITEMS_OF_MODE.get(project.rating_mode, "").format(**_T), limit=limit, **_T
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, {"project": project.pk, "annotator": annotator.pk})
        return [row[0] for row in cursor.fetchall()]


@dataclass(frozen=True)
class GoldScore:
    answered: int  # gold items this annotator judged
    correct: int  # of those, judged as the known answer says

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def gold_verdicts(*, project: Project, answers: dict[int, dict] | None = None) -> list[tuple[int, int, bool]]:
    """``(gold completion id, annotator id, correct)`` for every judgment of the project's gold items,
    each scored against the item's answer now (or the one ``answers`` gives for that completion id)."""
    from . import judgments

    gold = {cid: answer for cid, answer in GoldItem.objects.filter(project=project).values_list("completion_id", "answer")}
    gold.update(answers or {})
    verdicts = []
    singles = Rating.objects.filter(completion_id__in=gold, comparison__isnull=True, ranking__isnull=True)
    for cid, annotator_id, score, thumbs_up, criteria in singles.values_list(
        "completion_id", "annotator_id", "score", "thumbs_up", "criteria"
    ):
        if score is None and criteria is not None:  # a rubric rating answers a Likert gold item by its overall level
            score = round(judgments.rubric_level(criteria))
        verdicts.append((cid, annotator_id, judgments.gold_correct(gold[cid], score=score, thumbs_up=thumbs_up)))
    for cid, annotator_id, choice in Comparison.objects.filter(pair__completion_a_id__in=gold).values_list(
        "pair__completion_a_id", "annotator_id", "choice"
    ):
        verdicts.append((cid, annotator_id, judgments.gold_correct(gold[cid], choice=choice)))
    for cid, annotator_id, order in Ranking.objects.filter(group__anchor_id__in=gold).values_list(
        "group__anchor_id", "annotator_id", "order"
    ):
        verdicts.append((cid, annotator_id, judgments.gold_correct(gold[cid], order=order)))
    return verdicts


def gold_accuracy(*, project: Project) -> dict[int, GoldScore]:
    """Per annotator id: how many gold items they judged and how many right (against today's answers)."""
    tally: dict[int, list[int]] = {}
    for _, annotator_id, correct in gold_verdicts(project=project):
        counts = tally.setdefault(annotator_id, [0, 0])
        counts[0] += 1
        counts[1] += correct
    return {a: GoldScore(answered=n, correct=c) for a, (n, c) in tally.items()}


def annotator_weights(*, project: Project) -> dict[int, float]:
    """Per annotator id, the weight of their ratings in training: ``project.gold_low_weight`` for
    those who answered at least ``gold_min_answers`` gold items with an accuracy below
    ``gold_min_accuracy``; 1.0 for everyone else (annotators not listed count 1.0)."""
    return {
        annotator_id: project.gold_low_weight
        for annotator_id, score in gold_accuracy(project=project).items()
        if score.answered >= project.gold_min_answers and score.accuracy < project.gold_min_accuracy
    }
