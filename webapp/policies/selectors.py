"""Reads for model versions and the audit log.

Human ratings of a version's outputs are read through the reverse relations
(``completions__ratings__…``) by name, so this app never imports the
annotation app that sits above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, QuerySet

from webapp.errors import ApplicationError

from .models import AuditEvent, Membership, ModelVersion, Project, RatingMode, VersionExport

Z_95 = 1.96


@dataclass(frozen=True)
class RatingStats:
    """Mean human rating of a version's completions with a normal-approximation 95% interval.

    ``low``/``high`` are ``None`` with fewer than two ratings.
    """

    n: int
    mean: float | None
    low: float | None
    high: float | None


def mean_with_ci(values: list[float], *, bounds: tuple[float, float] | None = None) -> RatingStats:
    """Mean ± 1.96 · sample std / sqrt(n), clipped to the scale's ``bounds``; no interval below two values.

    Always ``low ≤ mean ≤ high``: clipping never moves an end past the mean, even for
    values outside ``bounds``.
    """
    n = len(values)
    if n == 0:
        return RatingStats(0, None, None, None)
    mean = sum(values) / n
    if n < 2:
        return RatingStats(n, mean, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z_95 * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds:
        low, high = min(max(low, bounds[0]), mean), max(min(high, bounds[1]), mean)
    return RatingStats(n, mean, low, high)


def rating_unit(*, project: Project) -> str:
    """What a version's mean human rating means in this project's rating mode."""
    return {
        RatingMode.LIKERT: "mean Likert score (1–5)",
        RatingMode.THUMBS: "share of thumbs up (0–1)",
    }.get(project.rating_mode, "mean Likert score (1–5)")


# What a rating means as a level (Likert 1–5, thumbs 1/0) is said once, in
# webapp.annotation.judgments, an app above this one: the annotation app plugs its reader in
# at start (AnnotationConfig.ready), so this module never imports it.
# Signature: (*, project) -> {version id: [level, ...]}.
version_levels_reader = None


def version_rating_stats(*, project: Project) -> dict[int, RatingStats]:
    """Per version id: its completions' ratings in the unit of :func:`rating_unit`, with a 95% interval.

    Thumbs projects: share of thumbs up (up = 1, down = 0), in [0, 1]. Likert
    and pairwise projects: mean Likert score, in [1, 5]. Only ratings of that
    kind count, so a project whose rating mode changed never averages Likert
    scores with thumbs (nor clips one scale's mean to the other's bounds).
    Pairwise decisions compare two outputs of one version and say nothing
    about the version's level, so they are not counted here.
    """
    thumbs = project.rating_mode == RatingMode.THUMBS
    bounds = (0.0, 1.0) if thumbs else (1.0, 5.0)
    values = version_levels_reader(project=project) if version_levels_reader is not None else {}
    ids = ModelVersion.objects.filter(project=project).values_list("pk", flat=True)
    return {pk: mean_with_ci(values.get(pk, []), bounds=bounds) for pk in ids}


def versions_for_project(*, project: Project) -> list[ModelVersion]:
    """Versions, newest first, each with ``rating`` (:class:`RatingStats`), ``run`` (the run that made it,
    or None) and ``latest_export`` (its most recent download request, or None)."""
    stats = version_rating_stats(project=project)
    versions = list(
        ModelVersion.objects.filter(project=project)
        .select_related("parent")
        .prefetch_related("produced_by")
        .order_by("-number")
    )
    latest: dict[int, VersionExport] = {}
    for export in VersionExport.objects.filter(version__project=project).order_by("created_at", "id"):
        latest[export.version_id] = export
    for version in versions:
        version.rating = stats[version.pk]
        runs = list(version.produced_by.all())
        version.run = runs[0] if runs else None
        version.latest_export = latest.get(version.pk)
    return versions


@dataclass(frozen=True)
class PromotionWait:
    """A version that passed the promotion guard and waits, unserved, for a gate of an app above
    (the arena): ``votes`` so far of the ``needed``; ``won``: the gate is passed, staff may serve it."""

    version: int  # its number
    served: int  # the served version's number
    gate: str  # e.g. "arena"
    votes: int
    needed: int
    won: bool
    reason: str  # one sentence

    @property
    def votes_missing(self) -> int:
        return max(self.needed - self.votes, 0)


def promotion_waits(*, project: Project, versions: list[ModelVersion] | None = None) -> list[PromotionWait]:
    """What each unserved version newer than the served one waits for before it may be served
    (``policies.signals.promotion_wait``; the arena answers where ``arena_required``), newest first.
    Versions held back by the guard, or whose run is still evaluating them, are left out: they
    wait for nothing yet. ``versions``: from :func:`versions_for_project`, to save its queries."""
    from .signals import promotion_wait

    served = project.served_version
    if served is None:
        return []
    if versions is None:
        versions = versions_for_project(project=project)
    waits = []
    for version in versions:
        run = getattr(version, "run", None)
        if version.number <= served.number or version.held_back_reason or (run is not None and run.is_active):
            continue
        for _, answer in promotion_wait.send(sender=Project, version=version, served=served):
            if answer:
                waits.append(PromotionWait(version=version.number, served=served.number, **answer))
    return waits


def latest_export(*, version: ModelVersion) -> VersionExport | None:
    """The version's most recent download request (:class:`VersionExport`), or None."""
    return version.exports.order_by("-created_at", "-id").first()


def ready_export(*, version: ModelVersion) -> VersionExport | None:
    """The version's most recent finished download (:class:`VersionExport` with status ready), or None."""
    return version.exports.filter(status=VersionExport.Status.READY).order_by("-created_at", "-id").first()


def promotions_since(*, version, since) -> QuerySet[AuditEvent]:
    """``version``'s ``promote`` audit events at or after ``since`` (a datetime). Either may be an
    ``OuterRef``, so a list can ask it of each of its rows in one subquery
    (``webapp.training.selectors.runs_for_project``)."""
    return AuditEvent.objects.filter(version=version, action=AuditEvent.Action.PROMOTE, created_at__gte=since)


def version_served_since(*, version: ModelVersion, since) -> AuditEvent | None:
    """The first time ``version`` was served (its ``promote`` audit event) after ``since``, or None.

    A run's page says its version was held back when the run ended; this tells it the
    version was served later (staff overrode the guard, or the arena's votes came in). Matched by the
    event's ``version`` key, never by its ``target`` text."""
    if since is None:
        return None
    return (
        promotions_since(version=version, since=since)
        .select_related("actor")
        .order_by("created_at", "id")
        .first()
    )


def audit_events(*, project: Project, limit: int = 200) -> QuerySet[AuditEvent]:
    """The project's audit log, newest first."""
    return AuditEvent.objects.filter(project=project).select_related("actor")[:limit]


def project_access(*, project_slug: str, user) -> tuple[Project | None, str | None]:
    """The project named ``project_slug`` and the user's role in it (``"staff"`` or ``"annotator"``).

    ``(None, None)`` when the user may not open it (not a member, inactive,
    anonymous) or it does not exist; a global staff user (``is_staff``) is staff
    of every project. One query.
    """
    if not user.is_authenticated or not user.is_active:
        return None, None
    # Every page of a project asks this first: written out rather than built by the ORM, whose
    # compiling of a join over the project's many columns cost more CPU than the rest of the read.
    if user.is_staff:
        sql, params = _PROJECT_SQL.format(**_ACCESS_TABLES), [project_slug]
    else:
        sql, params = _MEMBER_PROJECT_SQL.format(**_ACCESS_TABLES), [project_slug, user.pk]
    project = next(iter(Project.objects.raw(sql, params)), None)
    if project is None:
        return None, None
    role = project.__dict__.pop("member_role", Membership.Role.STAFF)
    return project, role


_ACCESS_TABLES = {"project": Project._meta.db_table, "membership": Membership._meta.db_table}
_PROJECT_SQL = "SELECT p.* FROM {project} p WHERE p.slug = %s"
_MEMBER_PROJECT_SQL = """
SELECT p.*, m.role AS member_role FROM {membership} m JOIN {project} p ON p.id = m.project_id
WHERE p.slug = %s AND m.user_id = %s
"""


def projects_for(*, user) -> list[tuple[Project, str]]:
    """The projects the user may open, with their role in each (global staff: every project, as staff)."""
    projects = Project.objects.select_related("served_version")
    if user.is_staff:
        return [(p, Membership.Role.STAFF) for p in projects]
    roles = dict(Membership.objects.filter(user=user).values_list("project_id", "role"))
    return [(p, roles[p.pk]) for p in projects.filter(pk__in=roles)]


def project_members(*, project: Project) -> QuerySet[Membership]:
    """The project's memberships with their users, annotators first, then staff, each by username: the
    setup page's members table and ``GET /api/v1/projects/{slug}/members``. Inactive users are listed
    (they keep their membership; their role can still be changed and they can be removed)."""
    return Membership.objects.filter(project=project).select_related("user").order_by("role", "user__username")


def projects_only_staffed_by(*, users) -> QuerySet[Project]:
    """The projects in which some of ``users`` (a list of users) are staff and no other active user is, by
    slug: those that would be left without anyone among their members to manage them (global staff aside)
    if ``users`` all stopped being staff there or stopped being active. The own ``is_active`` of ``users``
    is not looked at. One query when evaluated.
    """
    staff = Membership.objects.filter(project=OuterRef("pk"), role=Membership.Role.STAFF)
    return (
        Project.objects.filter(Exists(staff.filter(user__in=users)))
        .exclude(Exists(staff.filter(user__is_active=True).exclude(user__in=users)))
        .order_by("slug")
    )


def user_called(*, username: str):
    """The user (active or not) whose username is exactly ``username``: the one lookup, and the one message
    for a name nobody has, of the setup page's members form, the members API and the commands that take a
    username (``project_member``, ``api_token``).

    Raises:
        ApplicationError: no user is called ``username`` ("No user is called 'x'; create the account first").
    """
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ApplicationError(f"No user is called {username!r}; create the account first (Admin → Users).")
    return user


def project_member(*, project: Project, username: str) -> Membership | None:
    """The membership of the user called ``username`` (active or not) in ``project``, with its user; None
    when they are not a member."""
    return project_members(project=project).filter(user__username=username).first()
