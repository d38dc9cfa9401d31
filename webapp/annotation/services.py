"""Writes for annotation: importing prompts, filling the pool, leases, ratings."""

from __future__ import annotations

import itertools
import logging
import random
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from webapp import broker
from webapp.errors import ApplicationError, InvalidFields
from webapp.policies.models import Project, RatingMode
from webapp.text import storable_text, without_nul

from . import selectors
from .importers import SUFFIXES, TEXT_FIELD_RULE, ImportLimits, PromptFileError, PromptRow, iter_prompt_rows, prompt_file_check
from .models import (
    Choice,
    ChosenBy,
    Comparison,
    Completion,
    GoldItem,
    Lease,
    Pair,
    PoolClaim,
    Prompt,
    RankedPair,
    RankGroup,
    Ranking,
    Rating,
    RatingRevision,
    Skip,
)

log = logging.getLogger(__name__)

POOL_REFILL_TASK_NAME = "webapp.annotation.tasks.pool_refill"
REFILL_NUDGE_EVERY_S = 10
_last_nudge: dict[int, float] = {}


def pool_refill_send(*, project_id: int) -> bool:
    """Queue a pool refill of the project on the ``generation`` queue; True if the broker took it.

    Never raises for a broker problem (:func:`webapp.broker.task_send` logs it); the beat
    refill catches up once the broker is back.
    """
    return broker.task_send(POOL_REFILL_TASK_NAME, args=[project_id], queue="generation")


def pool_refill_nudge(*, project: Project, queue_empty: bool) -> None:
    """Ask the generation worker to top up the pool when it falls below the project's
    low-water mark (``Project.pool_low_water``, at most the pool size) or the queue is empty.

    Called by the annotator's requests (pages and API). Checked at most every few seconds
    per process and project, so the pool's size is not counted on every request. A down
    broker fails neither the page nor a rating that already committed.
    """
    now = time.monotonic()
    if now - _last_nudge.get(project.pk, -1e9) < REFILL_NUDGE_EVERY_S:
        return
    _last_nudge[project.pk] = now
    if queue_empty or selectors.pool_needs_refill(project=project):
        pool_refill_send(project_id=project.pk)

LEASE_MINUTES = 10
# Rows a pool refill decodes at once, and a refill's floor (:func:`_refill_target`); setting
# ``REWARDLOOP_GENERATION_BATCH``. 16 on CPU: on SmolLM2 at 1 torch thread a 32-card refill made
# 1.58x the cards per CPU second of 8 rows, its first card about 1.2x later
# (``bench/generation_rows_cpu.py``, README's configuration table).
GENERATION_BATCH = int(getattr(settings, "REWARDLOOP_GENERATION_BATCH", 16))


@dataclass(frozen=True)
class ImportResult:
    created: int
    duplicates: int
    text_fields: dict[str, int] = field(default_factory=dict)  # column/key -> rows whose text it gave
    unread_fields: tuple[str, ...] = ()  # columns/keys no row's import read, sorted

    def fields_read_sentence(self) -> str:
        """Which field gave the prompt text and which were not read, for a person: "Prompt text read
        from 'prompt'; not read: 'id'." (each field's row count where rows differ); "" when no row was read."""
        if not self.text_fields:
            return ""
        several = len(self.text_fields) > 1
        read = ", ".join(f"'{f}'" + (f" ({n} row{'s' * (n != 1)})" if several else "") for f, n in self.text_fields.items())
        unread = "; not read: " + ", ".join(f"'{f}'" for f in self.unread_fields) if self.unread_fields else ""
        return f"Prompt text read from {read}{unread}."


IMPORT_BATCH = 1000


class _FieldsRead:
    """Which field gave each row its text and which fields no row read, tallied row by row."""

    def __init__(self):
        self.text_fields: dict[str, int] = {}
        self.unread: set[str] = set()

    def add(self, row: PromptRow) -> None:
        self.text_fields[row.text_field] = self.text_fields.get(row.text_field, 0) + 1
        self.unread.update(row.unread_fields)


@transaction.atomic
def prompts_create(*, project: Project, rows: Iterable[PromptRow]) -> ImportResult:
    """Store validated prompt rows, ``IMPORT_BATCH`` at a time; prompts the project has already
    (same text, by ``Prompt.text_sha256``) are counted, not repeated. The result also says which
    field gave the rows their text (``text``, else ``prompt``: ``importers.TEXT_FIELD_RULE``) and
    which fields no row read, as the import preview (:func:`prompt_file_preview`) shows them.

    ``rows`` may be a stream: it is read once and never held whole. An exception
    raised while reading it (a bad line found late) rolls every row back.
    Imports into one project are serialised by a lock on its row, so the counts
    are exact.
    """
    Project.objects.select_for_update().filter(pk=project.pk).first()
    before = Prompt.objects.filter(project=project).count()
    seen = 0
    fields_read = _FieldsRead()
    rows = iter(rows)
    while batch := list(itertools.islice(rows, IMPORT_BATCH)):
        seen += len(batch)
        for row in batch:
            fields_read.add(row)
        Prompt.objects.bulk_create(
            [
                Prompt(
                    project=project,
                    text=row.text,
                    text_sha256=Prompt.digest(row.text),
                    source=row.source,
                    held_out=row.held_out,
                )
                for row in batch
            ],
            ignore_conflicts=True,  # the (project, text_sha256) constraint drops repeats, in the file or stored
        )
    created = Prompt.objects.filter(project=project).count() - before
    return ImportResult(
        created=created, duplicates=seen - created,
        text_fields=fields_read.text_fields, unread_fields=tuple(sorted(fields_read.unread)),
    )


def prompts_import(*, project: Project, path: str | Path, limits: ImportLimits | None = None) -> ImportResult:
    """Import a JSONL or CSV prompt file whole, or not at all, in memory that does not grow with the file.

    The file is read twice as a stream: first validated whole (nothing
    written), then stored in batches inside one transaction (which a file
    changed in between to hold a bad line still rolls back). Caps on size,
    lines and line length: :class:`~webapp.annotation.importers.ImportLimits`
    (defaults from settings).

    Raises:
        PromptFileError: a bad line (number and reason for each) or a cap exceeded; nothing is stored.
        ApplicationError: unreadable file or unknown extension.
    """
    prompt_file_check(path, limits=limits)
    return prompts_create(project=project, rows=iter_prompt_rows(path, limits=limits))


UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.(jsonl|json|ndjson|csv)$")
PREVIEW_ROWS = 10
# A previewed upload nobody imported (the tab was closed) is removed when a later upload is stored this long after.
UPLOAD_KEEP = timedelta(days=1)


def _uploads_dir() -> Path:
    return Path(settings.DATA_DIR) / "uploads"


def prompt_upload_store(*, upload) -> str:
    """Keep an uploaded prompt file on the server until staff confirm its import; returns its name
    (a random token and the file's extension, the only handle the browser gets back).

    Raises:
        ApplicationError: an extension other than .jsonl/.json/.ndjson/.csv.
    """
    suffix = Path(upload.name).suffix.lower()
    if suffix not in SUFFIXES:
        raise ApplicationError("Upload a .jsonl or .csv file.")
    folder = _uploads_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _uploads_prune(folder)
    name = f"{uuid.uuid4().hex}{suffix}"
    with open(folder / name, "wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return name


def _uploads_prune(folder: Path) -> None:
    """Remove stored uploads last written more than :data:`UPLOAD_KEEP` ago (previews never imported)."""
    cutoff = time.time() - UPLOAD_KEEP.total_seconds()
    for path in folder.iterdir():
        try:
            if UPLOAD_NAME.match(path.name) and path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:  # another process pruned or imported it first
            pass


def prompt_upload_discard(*, name: str) -> None:
    """Remove the stored upload called ``name`` (one whose preview found bad lines: it can never be
    imported). A name :func:`prompt_upload_store` does not give, or a file already gone, is ignored."""
    if UPLOAD_NAME.match(name):
        (_uploads_dir() / name).unlink(missing_ok=True)


def prompt_upload_path(*, name: str) -> Path:
    """The stored upload called ``name``.

    Raises:
        ApplicationError: not a name :func:`prompt_upload_store` gives, or the file is gone.
    """
    path = _uploads_dir() / name
    if not UPLOAD_NAME.match(name) or not path.exists():
        raise ApplicationError("That upload is gone; choose the file again.")
    return path


def prompt_file_preview(*, path: Path) -> dict:
    """Read a prompt file whole without storing it: its first rows, counts and errors.

    Returns ``{"rows": [PromptRow] (first PREVIEW_ROWS), "n_rows", "n_held_out", "errors":
    [(line, reason)] (first MAX_REPORTED_ERRORS), "n_errors", "text_fields": {field: rows whose
    text it gave}, "unread_fields": [names no row's import reads], "text_field_rule": str}``; a
    file with errors lists the valid rows read before the first bad line.
    """
    rows, n_rows, n_held_out = [], 0, 0
    errors, n_errors = [], 0
    fields_read = _FieldsRead()
    try:
        for row in iter_prompt_rows(path):
            n_rows += 1
            n_held_out += row.held_out
            fields_read.add(row)
            if len(rows) < PREVIEW_ROWS:
                rows.append(row)
    except PromptFileError as exc:
        errors, n_errors = exc.errors, exc.total
    except ApplicationError as exc:
        errors, n_errors = [(0, exc.message)], 1
    return {
        "rows": rows, "n_rows": n_rows, "n_held_out": n_held_out, "errors": errors, "n_errors": n_errors,
        "text_fields": fields_read.text_fields, "unread_fields": sorted(fields_read.unread),
        "text_field_rule": TEXT_FIELD_RULE,
    }


@transaction.atomic
def prompt_upload_import(*, project: Project, name: str, user=None) -> ImportResult:
    """Import a stored upload into ``project`` (whole or not at all, :func:`prompts_import`), audited; the
    upload is removed once imported.

    Raises:
        ApplicationError / PromptFileError: as :func:`prompt_upload_path` and :func:`prompts_import`.
    """
    from webapp.policies.services import audit_record

    path = prompt_upload_path(name=name)
    result = prompts_import(project=project, path=path)
    audit_record(
        project=project, actor=user, action="settings", target="prompts imported",
        detail={"created": result.created, "duplicates": result.duplicates},
    )
    transaction.on_commit(lambda: path.unlink(missing_ok=True))
    return result


# --- The completion pool --------------------------------------------------------


def _prompts_to_sample(*, project: Project, n: int, rng: random.Random, exclude: set[int] = frozenset()) -> list[Prompt]:
    """The least-sampled training prompts of the served version first, random among equals.

    Prompts whose ids are in ``exclude`` (claimed by another refill) are never chosen.
    """
    # Ids and counts only (one row of two ints per prompt), then the n chosen prompts.
    counted = list(
        Prompt.objects.filter(project=project, held_out=False, from_production=False)
        .exclude(pk__in=exclude)
        .annotate(n_completions=Count("completions", distinct=True))
        .order_by("pk")
        .values_list("pk", "n_completions")
    )
    rng.shuffle(counted)
    counted.sort(key=lambda row: row[1])
    chosen = [pk for pk, _ in counted[:n]]
    by_pk = Prompt.objects.in_bulk(chosen)
    return [by_pk[pk] for pk in chosen]


def _rollout_completion(*, project: Project, prompt: Prompt, version, rollout) -> Completion:
    return Completion(
        project=project,
        prompt=prompt,
        model_version=version,
        text=storable_text(rollout.text),  # display text; token_ids below are the exact sample
        prompt_token_ids=list(rollout.prompt_ids),
        token_ids=list(rollout.completion_ids),
        behaviour_logprobs=[float(x) for x in rollout.behaviour_logprobs],
        finished=bool(rollout.finished),
    )


@transaction.atomic
def pair_create(*, completion_a: Completion, completion_b: Completion) -> Pair:
    """Pair two completions of the same prompt and version for side-by-side comparison.

    Raises:
        ApplicationError: the completions differ in prompt or version, are the
            same completion, or one of them is paired already.
    """
    if completion_a.pk == completion_b.pk:
        raise ApplicationError("A pair needs two different completions.")
    if (completion_a.prompt_id, completion_a.model_version_id) != (completion_b.prompt_id, completion_b.model_version_id):
        raise ApplicationError("Both completions of a pair must come from the same prompt and version.")
    try:
        with transaction.atomic():
            return Pair.objects.create(
                project_id=completion_a.project_id, completion_a=completion_a, completion_b=completion_b
            )
    except IntegrityError as exc:
        raise ApplicationError("One of these completions is in a pair already.") from exc


@transaction.atomic
def rank_group_create(*, completions: list[Completion]) -> RankGroup:
    """Group k ≥ 2 completions of the same prompt and version to be ranked together; the first is the anchor.

    Raises:
        ApplicationError: fewer than two, a completion twice, different prompts or
            versions, or a completion in a group already.
    """
    if len(completions) < 2 or len({c.pk for c in completions}) != len(completions):
        raise ApplicationError("A ranking needs two or more different completions.")
    if len({(c.prompt_id, c.model_version_id) for c in completions}) != 1:
        raise ApplicationError("The completions of a ranking must come from the same prompt and version.")
    ids = [c.pk for c in completions]
    if Completion.objects.filter(pk__in=ids, rank_group__isnull=False).exists():
        raise ApplicationError("One of these completions is in a ranking group already.")
    group = RankGroup.objects.create(project_id=completions[0].project_id, anchor=completions[0])
    Completion.objects.filter(pk__in=ids).update(rank_group=group)
    for c in completions:
        c.rank_group = group
    return group


POOL_CLAIM_TTL = timedelta(minutes=10)


def _pool_claim_batch(
    *, project: Project, version, per_prompt: int, max_prompts: int, budget: int | None, rng: random.Random,
    fill_to: int | None = None,
) -> list[PoolClaim]:
    """Claim the prompts of the next generation batch; ``[]`` when the pool is full.

    One short transaction under a lock on the project row (``SELECT ... FOR
    UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
    it), so two refills of one project claim one after the other: the second
    sees the first's claims as part of the pool and never picks its prompts.
    ``budget`` caps the completions claimed (``None``: no cap beyond the target). ``fill_to``: the
    pool size to claim up to (default :func:`selectors.pool_target_for`; a refill passes
    :func:`_refill_target`, which may exceed it by less than a generation batch).
    """
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if version.pk not in (locked.served_version_id, locked.shadow_version_id):
            return []
        now = timezone.now()
        PoolClaim.objects.filter(project=project, expires_at__lte=now).delete()
        claims = PoolClaim.objects.filter(project=project)
        in_flight = sum(c.n_completions for c in claims if c.model_version_id == version.pk)
        target = selectors.pool_target_for(project=locked, version_id=version.pk) if fill_to is None else fill_to
        deficit = target - selectors.pool_free(project=locked, version_id=version.pk) - in_flight
        if budget is not None:
            deficit = min(deficit, budget)
        if deficit <= 0:
            return []
        n_prompts = min(max_prompts, -(-deficit // per_prompt))
        claimed_prompts = {c.prompt_id for c in claims if c.model_version_id == version.pk}
        prompts = _prompts_to_sample(project=project, n=n_prompts, rng=rng, exclude=claimed_prompts)
        return PoolClaim.objects.bulk_create(
            [
                PoolClaim(
                    project=project,
                    prompt=prompt,
                    model_version=version,
                    n_completions=per_prompt,
                    expires_at=now + POOL_CLAIM_TTL,
                )
                for prompt in prompts
            ]
        )


def _pool_store_batch(
    *, project: Project, version, claims: list[PoolClaim], batch, rollouts, pairwise: bool, per_prompt: int = 1, ranking: bool = False,
) -> list[int]:
    """Store a sampled batch and release its claims in one transaction; returns the stored completions' ids.

    Re-checks under the project lock that the version is still served (or still the
    shadow candidate; else stores nothing) and that each claim is still held (a claim
    that expired and was taken over by another refill drops its prompt's completions).
    The caller announces the ids (:func:`_completions_stored_send`), a refill's
    groups together, so the reward model scores them in one batch. Items of the served
    version retire the older versions' leftovers in the same transaction
    (:func:`completions_retire_older`): the first batch after a serve ends the handover.
    """
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if version.pk not in (locked.served_version_id, locked.shadow_version_id):
            log.info("served version changed during sampling; stopping this refill")
            return []
        held = set(PoolClaim.objects.filter(pk__in=[c.pk for c in claims]).values_list("prompt_id", flat=True))
        PoolClaim.objects.filter(pk__in=[c.pk for c in claims]).delete()
        completions = [
            _rollout_completion(project=project, prompt=prompt, version=version, rollout=rollout)
            for prompt, rollout in zip(batch, rollouts)
            if prompt.pk in held
        ]
        for completion in completions:
            completion.save()
        if pairwise:
            for a, b in zip(completions[0::2], completions[1::2]):
                pair_create(completion_a=a, completion_b=b)
        if ranking:
            by_prompt: dict[int, list[Completion]] = {}
            for completion in completions:
                by_prompt.setdefault(completion.prompt_id, []).append(completion)
            for group in by_prompt.values():
                if len(group) == per_prompt:
                    rank_group_create(completions=group)
        if completions and version.pk == locked.served_version_id:
            completions_retire_older(project=locked)
        return [c.pk for c in completions]


def _completions_stored_send(*, project_id: int, completion_ids: list[int]) -> None:
    """Tell the apps above (rewards) about new pool completions; their errors are logged, never raised."""
    from .signals import completions_stored

    for receiver, result in completions_stored.send_robust(
        sender=Completion, project_id=project_id, completion_ids=completion_ids
    ):
        if isinstance(result, Exception):
            log.warning("project %s: %s failed on new completions: %s", project_id, receiver, result)


def completion_pool_refill(*, project: Project, max_new: int | None = None, seed: int | None = None) -> int:
    """Sample completions from the served version until the pool holds ``pool_target``; then,
    while the project has a shadow candidate (``Project.shadow_version``), from it until it
    has :func:`selectors.pool_target_for` open completions (``shadow_share`` of the target).
    When the target is at least a batch, a refill that samples at all samples at least a full
    batch, so the pool may end above its target by less than a batch; a smaller target is filled
    to exactly (:func:`_refill_target`).

    Runs in a Celery worker, never in a web request. One continuous-batching stream
    (``pgcore.rollout.generate_stream``) samples the whole deficit with
    ``GENERATION_BATCH`` rows decoding at once: whenever a prompt group's rows have all
    ended their slots are free, and the next prompts are claimed and join the running
    batch, so the batch stays full however the completion lengths differ. Each prompt
    group is stored as soon as its last completion ends, so the first items are
    rateable after one group's sampling, not the whole deficit's. Each chosen prompt
    gets ``project.completions_per_prompt`` completions (the group the leave-one-out
    baseline of ``pgcore.advantages`` compares), so a refill may overshoot the deficit
    by less than one group. Pairwise projects sample two completions per prompt and
    store them as a :class:`Pair` in the same transaction (never a half pair); ranking
    projects sample ``rank_k`` and store them as a :class:`RankGroup` the same way.
    Returns how many completions were created.

    Safe to run concurrently for one project (several generation workers): prompts
    are claimed first (:class:`PoolClaim`, under a lock on the project row), sampled
    outside any transaction, and each group is stored in the transaction that
    releases its claim. Claimed prompts count toward the pool, so concurrent refills
    together stay within one prompt group of the target and never sample one prompt
    for one version at the same time. Once the version sampled is neither served nor
    the shadow candidate, nothing more is claimed or stored.
    """
    project.refresh_from_db()
    version = project.served_version
    if version is None:
        return 0
    # One refill fills at most the deficit it found when it started (as before claims), so
    # annotators draining the pool meanwhile do not keep one task running forever.
    free = selectors.pool_free(project=project)
    fill_to = _refill_target(target=project.pool_target, free=free)
    budget = fill_to - free
    if max_new is not None:
        budget = min(budget, max_new)
    created = _pool_fill(project=project, version=version, budget=budget, seed=seed, fill_to=fill_to)
    shadow = project.shadow_version
    if shadow is not None and shadow.pk != version.pk:
        free = selectors.pool_free(project=project, version_id=shadow.pk)
        fill_to = _refill_target(target=selectors.pool_target_for(project=project, version_id=shadow.pk), free=free)
        budget = fill_to - free
        if max_new is not None:
            budget = min(budget, max_new - created)
        if budget > 0:
            created += _pool_fill(project=project, version=shadow, budget=budget, seed=seed, cached=False, fill_to=fill_to)
    return created


def _refill_target(*, target: int, free: int) -> int:
    """The pool size a refill fills to, given the pool's ``target`` and its ``free`` completions now
    (counts of completions): ``target`` when the pool is full or when ``target`` is below
    ``GENERATION_BATCH``; else at least ``free`` plus a full batch, so a refill that samples at all
    fills a batch's rows rather than sampling a shortfall of 1-2 cards (on SmolLM2 at 1 thread a
    decoding step at 4 rows costs about 0.8 of one at 8: ``bench/generation_rows_cpu.py``) and the
    pool ends at most ``target + GENERATION_BATCH - 1``. A pool smaller than a batch is the
    project's cap on cards waiting (each goes stale at the next serve); a full batch's floor would
    nearly double it (a target of 4 ended at 7), so it is filled to its target only.
    """
    if free >= target or target < GENERATION_BATCH:
        return target
    return max(target, free + GENERATION_BATCH)


def _pool_fill(
    *, project: Project, version, budget: int, seed: int | None, cached: bool = True, fill_to: int | None = None
) -> int:
    """Sample up to ``budget`` completions (plus less than one prompt group) of ``version`` into the
    pool in one continuous-batching stream; how many were stored (see :func:`completion_pool_refill`).
    ``fill_to``: the pool size claims fill to (default the version's target; see
    :func:`_refill_target`). ``cached``: sample with the process's cached policy of the served version
    (:func:`webapp.policies.runtime.policy_for_generation`); else load ``version`` for this call
    only, so a shadow candidate never evicts the served one."""

    from pgcore.rollout import generate_stream

    from webapp.policies.runtime import policy_for_generation, policy_load

    pairwise = project.rating_mode == RatingMode.PAIRWISE
    ranking = project.rating_mode == RatingMode.RANKING
    per_prompt = 2 if pairwise else project.rank_k if ranking else project.completions_per_prompt
    rng = random.Random(seed)
    state = {"budget": budget, "wait": False, "rows": 0}
    stored_ids: list[int] = []
    unannounced: list[int] = []

    def announce() -> None:
        """Tell the reward model (and any other receiver) about stored completions, a batch at a time."""
        ids = list(unannounced)
        unannounced.clear()
        if ids:
            transaction.on_commit(lambda: _completions_stored_send(project_id=project.pk, completion_ids=ids))

    slot_of: list[tuple[PoolClaim, Prompt]] = []  # stream index -> its claim and prompt
    ended: dict[int, dict[int, object]] = {}  # claim pk -> {stream index: rollout}
    open_claims: dict[int, PoolClaim] = {}

    def claim(free_rows: int) -> list[str]:
        """Claim prompts for ``free_rows`` rows (whole groups); their texts, per_prompt times each."""
        max_prompts = free_rows // per_prompt
        if state["wait"] or state["budget"] <= 0 or max_prompts < 1:
            return []
        claims = _pool_claim_batch(
            project=project, version=version, per_prompt=per_prompt, max_prompts=max_prompts,
            budget=state["budget"], rng=rng, fill_to=fill_to,
        )
        if not claims:
            # The pool is full (counting other refills' claims), the version changed, or every
            # prompt is in flight: ask again only once another group has ended.
            state["wait"] = True
            return []
        prompts = {p.pk: p for p in Prompt.objects.filter(pk__in=[c.prompt_id for c in claims])}
        texts = []
        for c in claims:
            open_claims[c.pk] = c
            ended[c.pk] = {}
            for _ in range(per_prompt):
                slot_of.append((c, prompts[c.prompt_id]))
                texts.append(prompts[c.prompt_id].text)
        state["budget"] -= len(texts)
        state["rows"] += len(texts)
        return texts

    def incoming() -> list[str]:
        # Claim once half the rows are free (whole groups): half as many claim transactions,
        # and the new prompts are prefilled together.
        free = GENERATION_BATCH - state["rows"]
        return claim(free) if free >= max(per_prompt, GENERATION_BATCH // 2) else []

    first = claim(max(GENERATION_BATCH, per_prompt))
    if not first:
        if not Prompt.objects.filter(project=project, held_out=False).exists():
            log.warning("project %s has no training prompts to sample", project.slug)
        return 0
    try:
        policy = policy_for_generation(version) if cached else policy_load(version, trainable=False)
        stream = generate_stream(
            policy,
            first,
            max_new_tokens=project.max_new_tokens,
            seed=seed,
            batch_size=max(GENERATION_BATCH, per_prompt),
            incoming=incoming,
        )
        for index, rollout in stream:
            state["rows"] -= 1
            c, _ = slot_of[index]
            ended[c.pk][index] = rollout
            if len(ended[c.pk]) < per_prompt:
                continue
            group = sorted(ended.pop(c.pk).items())
            del open_claims[c.pk]
            state["wait"] = False
            stored = _pool_store_batch(
                project=project,
                version=version,
                claims=[c],
                batch=[slot_of[i][1] for i, _ in group],
                rollouts=[r for _, r in group],
                pairwise=pairwise,
                per_prompt=per_prompt,
                ranking=ranking,
            )
            if not stored:
                project.refresh_from_db(fields=["served_version", "shadow_version"])
                if version.pk not in (project.served_version_id, project.shadow_version_id):
                    stream.close()  # neither served nor the candidate now: what runs is wasted, stop
                    break
            stored_ids.extend(stored)
            unannounced.extend(stored)
            if len(unannounced) >= GENERATION_BATCH:
                announce()
    finally:
        # Released already when each group was stored; this frees the rest when sampling failed or stopped.
        PoolClaim.objects.filter(pk__in=list(open_claims)).delete()
        announce()
    return len(stored_ids)


@dataclass(frozen=True)
class RetireResult:
    retired: int  # open items of older versions taken out of the queue now (0 while they wait for the first batch)
    revived: int  # open items of the newly served version put back


def _leftovers(*, project: Project):
    """Completions that are queue items still needing ratings (production answers never are)."""
    return Completion.objects.filter(project=project, n_ratings__lt=project.ratings_per_item).exclude(
        source=Completion.Source.PRODUCTION
    )


def completions_retire_older(*, project: Project) -> int:
    """Take the older versions' leftovers out of the queue; returns how many were retired.

    A *leftover* is an open item (``n_ratings < ratings_per_item``, not retired) of a
    version that is neither ``project.served_version`` nor its shadow candidate
    (``Project.shadow_version``, whose items the shadow queue offers). Each gets
    ``retired_at``: kept with any ratings it has (training still uses them), never
    offered again. Nothing is retired while ``project.drain_old_versions`` or while
    the project serves nothing. Leases already handed out stay valid. Idempotent.

    Called once the served version has items in the pool: by the pool refill in the
    transaction that stores a batch of the served version (the first one after a serve
    ends the handover; later ones find nothing to retire), and at the serve itself when
    the version already has open items (:func:`completions_retire_unserved`). Runs in
    the caller's transaction; ``project`` is the caller's (locked) row.
    """
    if project.served_version_id is None or project.drain_old_versions:
        return 0
    kept = [project.served_version_id] + ([project.shadow_version_id] if project.shadow_version_id else [])
    retired = (
        _leftovers(project=project)
        .filter(retired_at__isnull=True)
        .exclude(model_version_id__in=kept)
        .update(retired_at=timezone.now())
    )
    if retired:
        log.info("project %s: %d older items retired", project.slug, retired)
    return retired


def completions_retire_version(*, project: Project, version) -> int:
    """Retire the open items of ``version``, a shadow candidate dropped without being served
    (whatever ``drain_old_versions`` says: it never was an older *served* version); returns how many.
    Serving it later revives them (:func:`completions_retire_unserved`)."""
    return (
        _leftovers(project=project)
        .filter(model_version_id=version.pk, retired_at__isnull=True)
        .update(retired_at=timezone.now())
    )


def completions_retire_unserved(*, project: Project) -> RetireResult:
    """Hand the queue over to ``project.served_version`` once it changed.

    The served version's retired items (a rollback to it) are offered again. The older
    versions' leftovers stay in the queue, after the served version's items, until the
    served version has open items of its own: if it has some now (revived, or sampled
    while it was the shadow candidate) they are retired at once
    (:func:`completions_retire_older`); otherwise the pool refill that stores its first
    batch retires them, so an annotator who asks in between gets an older item, not an
    empty queue. With ``project.drain_old_versions`` they are never retired. Runs in the
    caller's transaction (the promotion's, through ``webapp.policies.signals.version_served``).
    """
    if project.served_version_id is None:
        return RetireResult(retired=0, revived=0)
    revived = (
        _leftovers(project=project)
        .filter(model_version_id=project.served_version_id, retired_at__isnull=False)
        .update(retired_at=None)
    )
    if revived:
        log.info("project %s: %d items of the served version revived", project.slug, revived)
    retired = completions_retire_older(project=project) if selectors.pool_size(project=project) > 0 else 0
    return RetireResult(retired=retired, revived=revived)


def on_version_served(sender, *, project: Project, **kwargs) -> None:
    """Receiver of ``webapp.policies.signals.version_served`` (connected in ``AnnotationConfig.ready``)."""
    completions_retire_unserved(project=project)


# --- Leases, ratings, skips, undo ---------------------------------------------------


RECLAIM_EVERY_S = 5.0
_last_reclaim: dict[int, float] = {}


def leases_reclaim_expired(*, project: Project, force: bool = False) -> int:
    """Delete expired, unrated leases so their slots go back to the queue; returns how many.

    Without ``force``, runs at most every ``RECLAIM_EVERY_S`` per process and
    project (leases last minutes; a few seconds' delay changes nothing, and
    most requests then skip the statement).
    """
    now = time.monotonic()
    if not force and now - _last_reclaim.get(project.pk, -1e9) < RECLAIM_EVERY_S:
        return 0
    _last_reclaim[project.pk] = now
    deleted, _ = Lease.objects.filter(
        completion__project=project, fulfilled=False, expires_at__lte=timezone.now()
    ).delete()
    return deleted


def lease_next(*, project: Project, annotator, lease_minutes: int = LEASE_MINUTES) -> Lease | None:
    """Lease the next item to ``annotator``, or return the lease they hold.

    Each lease takes a free slot ``0 ≤ slot < ratings_per_item`` of its
    completion (a pair's anchor in pairwise mode); the unique (completion,
    slot) constraint makes a lost race insert nothing, after which the next
    slot or candidate is tried. Expired, unrated leases are reclaimed
    (see :func:`leases_reclaim_expired`; always before answering "nothing"),
    so their items go back to the queue. Pairwise leases draw which side
    shows completion A. With ``project.gold_rate`` > 0, that share of the
    items handed out are gold items (:func:`_lease_gold`), at random, while the
    annotator has one left to answer; the card does not say so. A lease taken under an earlier rating
    mode (``Lease.rating_mode``: staff changed the mode since) is given back and a new item of the
    current mode leased, which may be the same completion, now with what this mode shows of it. The
    lease comes with what the card shows (see :func:`~webapp.annotation.selectors.lease_held`).
    """
    held, off_mode = selectors.lease_held_or_off_mode(project=project, annotator=annotator)
    if held:
        return held
    if off_mode:
        # A lease from before the project's rating mode changed was taken for another mode (a single completion
        # where pairs are rated now, a pair's anchor without a drawn side): give it back, so the annotator is
        # not stuck on it and its slot is free for this mode's queue.
        selectors.leases_off_mode(project=project, annotator=annotator).delete()
    leases_reclaim_expired(project=project)
    if project.gold_rate > 0 and _gold_rng.random() < project.gold_rate:
        lease = _lease_gold(project=project, annotator=annotator, lease_minutes=lease_minutes)
        if lease is not None:
            return lease
    lease = _lease_first_free(project=project, annotator=annotator, lease_minutes=lease_minutes)
    if lease is None and leases_reclaim_expired(project=project, force=True):
        # Before answering "nothing", free the slots expired leases still hold and look again.
        lease = _lease_first_free(project=project, annotator=annotator, lease_minutes=lease_minutes)
    return lease


LEASE_READ_ROUNDS = 3
_gold_rng = random.SystemRandom()


def _lease_gold(*, project: Project, annotator, lease_minutes: int) -> Lease | None:
    """Lease a gold item this annotator has not answered; None when none is left.

    Every annotator may answer a gold item, so its lease takes the first slot
    no lease of it holds (slots beyond ``ratings_per_item``), through the same
    insert as any lease; the lease records ``chosen_by`` "gold".
    """
    for completion_id in selectors.gold_candidate_ids(project=project, annotator=annotator):
        if _lease_take_slot(
            project=project,
            annotator=annotator,
            completion_id=completion_id,
            lease_minutes=lease_minutes,
            chosen_by=ChosenBy.GOLD,
            slots=_gold_free_slots(completion_id),
        ):
            return selectors.lease_held(project=project, annotator=annotator)
    return None


def _gold_free_slots(completion_id: int) -> list[int]:
    """Slots a new lease of gold item ``completion_id`` may try: the free ones, and a few past the
    last taken (a gold item has no ``ratings_per_item`` bound)."""
    taken = set(Lease.objects.filter(completion_id=completion_id).values_list("slot", flat=True))
    return [slot for slot in range(len(taken) + 3) if slot not in taken]


# Draw the active queue's uniform share and the shadow share (queue_rng), and the uniform share's items
# (queue_item_rng, apart so the shares' draws do not depend on the pool); module attributes so a test or
# the learning benchmark can seed them (then the queue repeats for a seed).
queue_rng = random.Random()
queue_item_rng = random.Random()


def queue_order_draw(*, project: Project) -> str:
    """How the next item is chosen (a ``ChosenBy`` value).

    While the project has a shadow candidate (``Project.shadow_version``, a version
    trained with the reward model waiting for people's ratings), with probability
    ``shadow_share`` one of its completions (``"shadow"``), so the over-optimisation guard
    has people's ratings of it to compare with the reward model's prediction. Otherwise
    queue order unless the project's active queue is on; then uniformly at random with
    probability ``active_uniform_share`` (so ratings of that share are an unbiased sample
    of the pool), else the item of largest reward-model uncertainty (uncertainty sampling,
    Lewis & Gale 1994; with an ensemble's spread as the uncertainty, query-by-committee,
    Seung et al. 1992)."""
    if project.shadow_version_id is not None and queue_rng.random() < project.shadow_share:
        return ChosenBy.SHADOW
    return _served_order_draw(project=project)


def _served_order_draw(*, project: Project) -> str:
    if not project.active_queue:
        return ChosenBy.FIFO
    return ChosenBy.UNIFORM if queue_rng.random() < project.active_uniform_share else ChosenBy.ACTIVE


def _lease_first_free(*, project: Project, annotator, lease_minutes: int) -> Lease | None:
    """Take the first candidate still free. Under load every candidate read can be taken
    by others before this annotator gets to it; then the queue is read again (a new
    statement sees their leases), a few times, rather than answering "nothing".

    The lease records why its item was chosen (``Lease.chosen_by``, :func:`queue_order_draw`);
    an active pick that found no item scored by the reward model is queue order ("fifo"); a
    shadow pick that found no candidate's item left for this annotator takes the served
    version's queue instead.
    """
    order = queue_order_draw(project=project)
    for _ in range(LEASE_READ_ROUNDS):
        candidates = selectors.queue_candidates(project=project, annotator=annotator, order=order, rng=queue_item_rng)
        if not candidates and order == ChosenBy.SHADOW:
            order = _served_order_draw(project=project)
            candidates = selectors.queue_candidates(project=project, annotator=annotator, order=order, rng=queue_item_rng)
        for completion_id, uncertainty in candidates:
            chosen_by = ChosenBy.FIFO if order == ChosenBy.ACTIVE and uncertainty is None else order
            if _lease_take_slot(
                project=project,
                annotator=annotator,
                completion_id=completion_id,
                lease_minutes=lease_minutes,
                chosen_by=chosen_by,
            ):
                # with what the card shows
                return selectors.lease_held(project=project, annotator=annotator)
        if not candidates:
            break
    return None


_LEASE_INSERT_SQL = f"""
INSERT INTO {Lease._meta.db_table}
    (completion_id, annotator_id, slot, expires_at, a_on_left, fulfilled, rating_mode, chosen_by, created_at)
VALUES (%(completion)s, %(annotator)s, %(slot)s, %(expires_at)s, %(a_on_left)s, %(fulfilled)s, %(rating_mode)s,
        %(chosen_by)s, %(now)s)
ON CONFLICT DO NOTHING
RETURNING id
"""
# Both unique constraints (completion, slot) and (completion, annotator) count as a conflict:
# a lost race inserts nothing, without an error, so no savepoint is needed around it.


_DRAW = object()  # ``a_on_left`` not given: drawn for pairwise projects, None otherwise


def _lease_take_slot(
    *,
    project: Project,
    annotator,
    completion_id: int,
    lease_minutes: int,
    fulfilled: bool = False,
    a_on_left=_DRAW,
    chosen_by: str = "fifo",
    slots: list[int] | None = None,
) -> Lease | None:
    """Take a free slot of the completion for ``annotator``; None when every slot is held or rated.

    The one way a lease slot is taken (next item, a gold item, a judgment
    without a lease, an undone item leased back); ``slots``: the slots to try
    (default: the free ones below ``ratings_per_item``). ``a_on_left``: the side to show (undo keeps
    the one the annotator saw); left out, it is drawn in pairwise projects.
    The returned lease carries what was inserted, not the completion.
    """
    if a_on_left is _DRAW:
        a_on_left = bool(secrets.randbits(1)) if project.rating_mode == RatingMode.PAIRWISE else None
    now = timezone.now()
    if slots is None:  # given only for a gold item, which any number of annotators may hold
        slots = range(project.ratings_per_item)
        if project.ratings_per_item > 1:  # with one slot, trying it is cheaper than reading it
            taken = set(Lease.objects.filter(completion_id=completion_id).values_list("slot", flat=True))
            slots = [s for s in slots if s not in taken]
    values = {
        "completion_id": completion_id,
        "annotator_id": annotator.pk,
        "expires_at": now + timedelta(minutes=lease_minutes),
        "a_on_left": a_on_left,
        "fulfilled": fulfilled,
        "rating_mode": project.rating_mode,
        "chosen_by": chosen_by,
        "created_at": now,
    }
    db_time = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        for slot in slots:
            cursor.execute(
                _LEASE_INSERT_SQL,
                {
                    "completion": completion_id,
                    "annotator": annotator.pk,
                    "slot": slot,
                    "expires_at": db_time(values["expires_at"]),
                    "a_on_left": values["a_on_left"],
                    "fulfilled": fulfilled,
                    "rating_mode": values["rating_mode"],
                    "chosen_by": chosen_by,
                    "now": db_time(now),
                },
            )
            row = cursor.fetchone()
            if row is not None:
                return Lease(id=row[0], slot=slot, **values)
            # else somebody took this slot (or this item) a moment ago
    return None


_LEASE_CLAIM_SQL = f"""
UPDATE {Lease._meta.db_table} SET fulfilled = %(true)s
WHERE completion_id = %(completion)s AND annotator_id = %(annotator)s
    AND completion_id IN (
        SELECT c.id FROM {Completion._meta.db_table} c JOIN {Prompt._meta.db_table} p ON p.id = c.prompt_id
        WHERE NOT p.held_out
    )
RETURNING id, slot, expires_at, a_on_left, rating_mode, created_at
"""


def _item_check_open(*, project: Project, annotator, completion: Completion) -> None:
    """Refuse a judgment of an item this annotator's queue would not offer them now.

    Raises:
        ApplicationError: a held-out prompt (never rateable), or an item that has
            all its ratings, that they rated or skipped, or that is no item in the
            project's mode (a pair's second completion).
    """
    held_out, open_ = selectors.item_state_for(project=project, annotator=annotator, completion_id=completion.pk)
    if held_out:
        raise ApplicationError("This prompt is held out to evaluate versions; it cannot be rated.")
    if not open_:
        raise ApplicationError("This item is not in your queue (rated, skipped or finished)", stale=True)


def _lease_for_judgment(*, project: Project, annotator, completion: Completion) -> Lease:
    """Lock the annotator's lease on ``completion`` and mark it fulfilled, in one statement.

    A judgment is accepted only for an item the annotator holds a lease on
    (live, or expired but not yet reclaimed: its slot is still theirs), or that
    their own queue would offer them right now; held-out prompts never. Called
    inside the judgment's transaction, which undoes the mark if the judgment
    fails. Without a lease (it expired and was reclaimed, or the item is
    judged by id), the item must be open for this annotator and a slot of it
    still free, taken the same way a lease is, so an item never gets more than
    ``ratings_per_item`` judgments.

    Raises:
        ApplicationError: a held-out prompt; an item not in their queue; the
            lease expired and the item went to someone else.
    """
    with connection.cursor() as cursor:
        cursor.execute(_LEASE_CLAIM_SQL, {"true": True, "completion": completion.pk, "annotator": annotator.pk})
        row = cursor.fetchone()
    if row is not None:
        lease_id, slot, expires_at, a_on_left, rating_mode, created_at = row
        return Lease(
            id=lease_id,
            completion_id=completion.pk,
            annotator_id=annotator.pk,
            slot=slot,
            expires_at=selectors.aware_datetime(expires_at),
            a_on_left=None if a_on_left is None else bool(a_on_left),
            fulfilled=True,
            rating_mode=rating_mode,
            created_at=selectors.aware_datetime(created_at),
        )
    _item_check_open(project=project, annotator=annotator, completion=completion)
    Lease.objects.filter(completion=completion, fulfilled=False, expires_at__lte=timezone.now()).delete()
    lease = _lease_take_slot(
        project=project, annotator=annotator, completion_id=completion.pk, lease_minutes=LEASE_MINUTES, fulfilled=True
    )
    if lease is None:
        # No lease of theirs is left to tell "expired and reclaimed" from "never held": say both.
        raise ApplicationError(
            f"Someone else holds this item now (if it was yours, your lease ran out after {LEASE_MINUTES} minutes)."
        )
    return lease


def _n_ratings_add(*, completion_ids: list[int], delta: int) -> None:
    """Keep ``Completion.n_ratings`` (the queue's count of stored ratings) true: the one place it changes.

    Called in the transaction that stores (``delta=1``) or deletes (``delta=-1``)
    the ratings of ``completion_ids``; the row lock of the UPDATE orders
    concurrent judgments of one completion. Never goes below zero.
    """
    # Written out: on every submit, and the ORM's compiling of this UPDATE cost ten times its running.
    ids = ", ".join(["%s"] * len(completion_ids))
    floor = " AND n_ratings >= %s" if delta < 0 else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Completion._meta.db_table} SET n_ratings = n_ratings + %s WHERE id IN ({ids}){floor}",
            [delta, *completion_ids, *([-delta] if delta < 0 else [])],
        )


def _seconds_on(lease: Lease | None, seconds_spent):
    """Seconds the annotator spent: as given, else since the item was leased to them."""
    if seconds_spent is not None or lease is None:
        return seconds_spent
    return max(0.0, (timezone.now() - lease.created_at).total_seconds())


@contextmanager
def _judgment_stored(*, completion_ids: list[int], already: str):
    """Around the writes of one judgment (its row and the :class:`Rating` of each of ``completion_ids``),
    inside the judging service's transaction: once they are stored, each completion's ``n_ratings``
    goes up by one (:func:`_n_ratings_add`).

    No savepoint of its own: the error leaves the service, whose atomic block rolls back (the lease's
    mark included).

    Raises:
        ApplicationError: ``already``, when the database refuses a second judgment of the item by the
            annotator (a unique constraint).
    """
    try:
        yield
    except IntegrityError as exc:
        raise ApplicationError(already) from exc
    _n_ratings_add(completion_ids=completion_ids, delta=1)


@transaction.atomic
def rating_create(
    *,
    annotator,
    completion: Completion,
    score: int | None = None,
    thumbs_up: bool | None = None,
    criteria: dict[str, int] | None = None,
    comment: str = "",
    seconds_spent=None,
) -> Rating:
    """Store one Likert (``score``), thumbs (``thumbs_up``) or rubric (``criteria``: a score 1–5 per
    criterion name of the project's rubric) rating and fulfil the annotator's lease.

    A rubric rating is stored with each criterion's name, weight and score as the rubric
    stands now, so a later change of the rubric leaves it as it was given.

    ``seconds_spent`` defaults to the time since the item was leased to them.
    NUL characters in ``comment`` are dropped (PostgreSQL cannot store them).

    Raises:
        InvalidFields: the fields do not fit the project's rating mode (Likert: ``score``, a whole
            number from 1 to 5; thumbs: ``thumbs_up``, a bool; rubric: ``criteria``; and no other mode's
            field), naming each (:func:`_rating_fields_check`; the REST API's 400).
        ApplicationError: a pairwise or ranking project (they take :func:`comparison_create` and
            :func:`ranking_create`), a rubric score missing or unknown, the annotator rated this
            item already, or the item has all the ratings it needs and was not leased to this annotator.
    """
    project = completion.project
    if project.rating_mode == RatingMode.PAIRWISE:
        raise ApplicationError("This project compares pairs; choose A, B, tie or both bad.")
    if project.rating_mode == RatingMode.RANKING:
        raise ApplicationError("This project ranks outputs; put them in order from best to worst.")
    _rating_fields_check(project=project, values={"score": score, "thumbs_up": thumbs_up, "criteria": criteria})
    stored_criteria = _rubric_scores(project=project, criteria=criteria) if project.rating_mode == RatingMode.RUBRIC else None
    lease = _lease_for_judgment(project=project, annotator=annotator, completion=completion)
    seconds_spent = _seconds_on(lease, seconds_spent)
    with _judgment_stored(completion_ids=[completion.pk], already="You have rated this item already."):
        rating = Rating.objects.create(
            completion=completion,
            annotator=annotator,
            score=score,
            thumbs_up=thumbs_up,
            criteria=stored_criteria,
            comment=without_nul(comment),
            seconds_spent=seconds_spent,
        )
    return rating


# The one field a rating of each single-completion mode sends, what it holds, and the page's words when
# it is missing or wrong (or another mode's field is sent).
RATE_FIELD_OF_MODE = {
    RatingMode.LIKERT: ("score", "a whole number from 1 to 5", "A rating is a whole number from 1 to 5."),
    RatingMode.THUMBS: ("thumbs_up", "true (up) or false (down)", "Choose thumbs up or thumbs down."),
    RatingMode.RUBRIC: ("criteria", "every criterion of the rubric by name, each 1 to 5",
                        "This project rates by its rubric: score each criterion from 1 to 5."),
}


def _rating_fields_check(*, project: Project, values: dict) -> None:
    """The rule of :func:`rating_create` on which fields a rating of ``project``'s mode sends: its mode's
    field (``RATE_FIELD_OF_MODE``), holding a value of its kind, and no other mode's field. ``values``
    maps each field name to what was sent (None: not sent). The rubric's criteria are checked by name
    and score in :func:`_rubric_scores`.

    Raises:
        InvalidFields: naming the mode's field when it is missing or not of its kind, then each other
            mode's field that was sent; stale when a rubric rating reaches a project that has left
            rubric mode (the page was read before the switch).
    """
    mode = str(project.rating_mode)
    field, holds, message = RATE_FIELD_OF_MODE[project.rating_mode]
    value = values.get(field)
    kind_ok = {
        "score": lambda v: not isinstance(v, bool) and isinstance(v, int) and 1 <= v <= 5,
        "thumbs_up": lambda v: isinstance(v, bool),
        "criteria": lambda v: isinstance(v, dict),
    }[field]
    errors = []
    if value is None:
        errors.append((field, f"Required in a {mode} project: {holds}."))
    elif not kind_ok(value):
        errors.append((field, f"Should be {holds}."))
    errors += [
        (other, f"Not used in a {mode} project (send {field}).")
        for other, _, _ in RATE_FIELD_OF_MODE.values() if other != field and values.get(other) is not None
    ]
    if not errors:
        return
    rubric_gone = field != "criteria" and values.get("criteria") is not None
    if rubric_gone:
        message = "This project has no rubric"
    elif len(errors) == 1 and value is None and field == "criteria" and project.rubric:
        message = f"Score every criterion from 1 to 5 ({project.rubric[0]['name']} is missing)."  # as _rubric_scores
    raise InvalidFields(message, fields=errors, stale=rubric_gone)


def _rubric_scores(*, project: Project, criteria) -> list[dict]:
    """``criteria`` (criterion name → score) as stored: the project's rubric, in its order, each
    criterion with its weight and score.

    Raises:
        ApplicationError: a criterion of the rubric without a whole-number score from 1 to 5, or a
            name the rubric does not have.
    """
    rubric = project.rubric or []
    criteria = criteria if isinstance(criteria, dict) else {}
    unknown = sorted(set(criteria) - {c["name"] for c in rubric})
    if unknown:
        raise ApplicationError(f"The rubric has no criterion {unknown[0]!r}", stale=True)
    stored = []
    for c in rubric:
        value = criteria.get(c["name"])
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise ApplicationError(f"Score every criterion from 1 to 5 ({c['name']} is missing).")
        stored.append({"name": c["name"], "weight": c["weight"], "score": value})
    if not stored:
        raise ApplicationError("This project's rubric has no criteria; ask staff to set it up.")
    return stored


@transaction.atomic
def comparison_create(
    *,
    annotator,
    pair: Pair,
    choice: str,
    a_on_left: bool | None = None,
    comment: str = "",
    seconds_spent=None,
) -> Comparison:
    """Store a pairwise decision (``choice`` names the pair's completions: a, b, tie, both_bad).

    The side shown is taken from the annotator's lease (drawn when it was
    leased); ``a_on_left`` is used only when the lease is gone. One
    :class:`Rating` per completion of the pair records the decision for
    training. NUL characters in ``comment`` are dropped.

    Raises:
        ApplicationError: an unknown choice, the annotator decided this pair
            already, the side shown is unknown, or the pair has all the
            decisions it needs and was not leased to this annotator.
    """
    if choice not in Choice.values:
        raise ApplicationError("Choose A, B, tie or both bad.")
    project = pair.project
    lease = _lease_for_judgment(project=project, annotator=annotator, completion=pair.completion_a)
    if lease is not None and lease.a_on_left is not None:
        a_on_left = lease.a_on_left
    if a_on_left is None:
        raise ApplicationError("Which side you were shown is unknown", stale=True)
    seconds_spent = _seconds_on(lease, seconds_spent)
    completion_ids = [pair.completion_a_id, pair.completion_b_id]
    with _judgment_stored(completion_ids=completion_ids, already="You have compared this pair already."):
        comparison = Comparison.objects.create(
            pair=pair,
            annotator=annotator,
            choice=choice,
            a_on_left=a_on_left,
            comment=without_nul(comment),
            seconds_spent=seconds_spent,
        )
        Rating.objects.bulk_create(
            Rating(completion_id=cid, annotator=annotator, comparison=comparison, seconds_spent=seconds_spent)
            for cid in completion_ids
        )
    return comparison


@transaction.atomic
def ranking_create(
    *,
    annotator,
    group: RankGroup,
    order: list[int],
    shown_order: list[int] | None = None,
    comment: str = "",
    seconds_spent=None,
) -> Ranking:
    """Store a ranking of a group's completions (``order``: their ids, best first).

    Stored as the order, one :class:`Rating` per completion (its ``rank``, 0 =
    best: what training reads) and one :class:`RankedPair` per pairwise
    comparison the order implies (:func:`judgments.ranking_implied_pairs`:
    what the exports and the reward model read). Leased, like every item,
    through the group's anchor. NUL characters in ``comment`` are dropped.

    Raises:
        ApplicationError: the project does not rank; ``order`` is not every
            completion of the group exactly once; the annotator ranked this group
            already; or the group has all the rankings it needs and was not leased
            to this annotator.
    """
    from .judgments import ranking_implied_pairs

    project = group.project
    if project.rating_mode != RatingMode.RANKING:
        raise ApplicationError("This project does not rank outputs", stale=True)
    members = set(Completion.objects.filter(rank_group=group).values_list("pk", flat=True))
    order = list(order or [])
    if any(isinstance(cid, bool) or not isinstance(cid, int) for cid in order) or sorted(order) != sorted(members):
        raise ApplicationError(f"Put all {len(members)} outputs in order, each exactly once.")
    if shown_order is not None and sorted(shown_order) != sorted(members):
        shown_order = None
    lease = _lease_for_judgment(project=project, annotator=annotator, completion=group.anchor)
    seconds_spent = _seconds_on(lease, seconds_spent)
    with _judgment_stored(completion_ids=order, already="You have ranked these outputs already."):
        ranking = Ranking.objects.create(
            group=group,
            annotator=annotator,
            order=order,
            shown_order=shown_order or [],
            comment=without_nul(comment),
            seconds_spent=seconds_spent,
        )
        Rating.objects.bulk_create(
            Rating(completion_id=cid, annotator=annotator, ranking=ranking, rank=rank, seconds_spent=seconds_spent)
            for rank, cid in enumerate(order)
        )
        RankedPair.objects.bulk_create(
            RankedPair(ranking=ranking, winner_id=w, loser_id=l) for w, l in ranking_implied_pairs(order)
        )
    return ranking


def gold_answer_check(*, completion: Completion, answer) -> dict:
    """``answer`` checked against the kind of item ``completion`` is (a pair's A, a rank group's
    anchor, else a single completion of the project's Likert or thumbs mode), normalised.

    Only an annotation item can be a gold item: a completion sampled for the annotation pool, never a
    production answer (``Completion.source`` production: a reply to an API request, which the queue
    never offers), nor in pairwise mode a pair's B (a pair is its A's item).

    Raises:
        ApplicationError: a production answer or a pair's B (the message says so in words), it does not
            fit (the message says what would), or the prompt is held out.
    """
    from . import judgments

    project = completion.project
    if completion.source == Completion.Source.PRODUCTION:
        raise ApplicationError(
            f"#{completion.pk} is a production answer (a reply to an API request), not an annotation item: "
            "annotators are never shown it, so it cannot be a gold item. Pick an item from the annotation queue."
        )
    pair_as_b = None
    if project.rating_mode == RatingMode.PAIRWISE:
        pair_as_b = Pair.objects.filter(completion_b=completion).values_list("completion_a_id", flat=True).first()
    if pair_as_b is not None:
        raise ApplicationError(
            f"#{completion.pk} is the second output (B) of a pair; a pair is named by its first output: use #{pair_as_b}."
        )
    if completion.prompt.held_out:
        raise ApplicationError("A held-out prompt judges versions; it cannot be a gold item.")
    group = selectors.rank_group_of(completion)
    if selectors.pair_of(completion) is not None:
        kind, members = "pairwise", None
    elif group is not None:
        kind, members = "ranking", list(group.members.values_list("pk", flat=True))
    else:
        kind, members = (RatingMode.THUMBS if project.rating_mode == RatingMode.THUMBS else RatingMode.LIKERT), None
    try:
        return judgments.gold_answer_clean(answer, kind=kind, members=members)
    except ValueError as exc:
        raise ApplicationError(str(exc)) from exc


@transaction.atomic
def gold_item_set(*, completion: Completion, answer: dict, note: str = "", actor=None) -> GoldItem:
    """Make ``completion`` (an item of the project's mode: a completion, a pair's A, a rank group's
    anchor) a gold item with ``answer``, or change the answer of one; recorded in the audit log.

    Gold accuracy is always scored against the current answer, so a changed answer re-scores every
    judgment of the item; the audit event says how many and how many verdicts it turned
    (``detail``: ``before``, ``after``, ``judgments``, ``verdicts_changed``), so nothing is re-scored
    silently.

    Raises:
        ApplicationError: the answer does not fit the item (the message says what would), or the
            item is held out.
    """
    from webapp.policies import services as policy_services

    project = completion.project
    answer = gold_answer_check(completion=completion, answer=answer)
    gold = GoldItem.objects.select_for_update().filter(completion=completion).first()
    before = gold.answer if gold else None
    verdicts_before = {(c, a): ok for c, a, ok in selectors.gold_verdicts(project=project) if c == completion.pk}
    if gold is None:
        gold = GoldItem.objects.create(project=project, completion=completion, answer=answer, note=without_nul(note))
    else:
        gold.answer, gold.note = answer, without_nul(note) or gold.note
        gold.save(update_fields=["answer", "note", "updated_at"])
    verdicts_after = {(c, a): ok for c, a, ok in selectors.gold_verdicts(project=project) if c == completion.pk}
    changed = sum(verdicts_before.get(key) != ok for key, ok in verdicts_after.items()) if before else 0
    policy_services.audit_record(
        project=project,
        actor=actor,
        action="gold_set",
        target=f"gold item {completion.pk}",
        detail={"before": before, "after": answer, "judgments": len(verdicts_after), "verdicts_changed": changed},
    )
    return gold


@dataclass(frozen=True)
class UndoResult:
    revision: RatingRevision | None  # the judgment undone, kept as history; None when a skip was undone
    lease: Lease | None  # the undone item, leased back to the annotator (None if its slot was taken meanwhile)
    skip: Skip | None = None  # the skip undone (deleted: its item is in the annotator's queue again)


NOTHING_TO_UNDO = "There is nothing to undo: only your last rating or skip of the past 10 minutes can be undone."


@transaction.atomic
def judgment_undo(*, project: Project, annotator, lease_minutes: int = LEASE_MINUTES) -> UndoResult:
    """Undo the annotator's last action (younger than 10 minutes): a judgment or a skip, whichever
    came last; the item comes back to them.

    A judgment is copied to a :class:`RatingRevision` first, so nothing is lost, then withdrawn; a skip
    is deleted (:func:`_skip_undo`), so the next undo reaches the judgment before it. The annotator's
    current unrated lease goes back to the queue, and the undone item is leased to them again to be
    rated anew (that new rating is the change).

    Raises:
        ApplicationError: nothing undoable (none, or older than 10 minutes), or
            a training run has used it already.
    """
    last = selectors.last_judgment(project=project, annotator=annotator)
    skip = selectors.last_skip(project=project, annotator=annotator)
    if skip is not None and (last is None or skip.created_at > last.created_at):
        return _skip_undo(project=project, annotator=annotator, skip=skip, lease_minutes=lease_minutes)
    if last is not None:
        last = type(last).objects.select_for_update().filter(pk=last.pk).first()  # a double press undoes once
    if last is None:
        raise ApplicationError(NOTHING_TO_UNDO)
    if not isinstance(last, selectors.judgments_by(project=project, annotator=annotator).model):
        kind = "comparison" if isinstance(last, Comparison) else "ranking" if isinstance(last, Ranking) else "rating"
        raise ApplicationError(
            f"Your last judgment (a {kind}) was made before the project's rating mode changed; "
            "it can't be undone in this mode, and older judgments stay as they are."
        )
    ratings = last.ratings.all() if isinstance(last, (Comparison, Ranking)) else Rating.objects.filter(pk=last.pk)
    if ratings.filter(training_runs__isnull=False).exists():
        raise ApplicationError("That rating is already being used to train the model; it can no longer be undone.")
    if isinstance(last, Comparison):
        anchor_id, pair_id = last.pair.completion_a_id, last.pair_id
        values = {"choice": last.choice, "a_on_left": last.a_on_left}
    elif isinstance(last, Ranking):
        anchor_id, pair_id = last.group.anchor_id, None
        values = {"order": last.order}
    else:
        anchor_id, pair_id = last.completion_id, None
        values = {"score": last.score, "thumbs_up": last.thumbs_up, "criteria": last.criteria}
    revision = RatingRevision.objects.create(
        completion_id=anchor_id,
        pair_id=pair_id,
        annotator=annotator,
        action=RatingRevision.Action.UNDONE,
        comment=last.comment,
        seconds_spent=last.seconds_spent,
        rated_at=last.created_at,
        **values,
    )
    rated_ids = list(ratings.values_list("completion_id", flat=True))
    last.delete()  # a comparison takes its two ratings with it, a ranking its ratings and implied pairs
    _n_ratings_add(completion_ids=rated_ids, delta=-1)
    lease = _lease_back(
        project=project, annotator=annotator, completion_id=anchor_id, lease_minutes=lease_minutes,
        a_on_left=values.get("a_on_left"),
    )
    return UndoResult(revision=revision, lease=lease)


def _skip_undo(*, project: Project, annotator, skip: Skip, lease_minutes: int) -> UndoResult:
    """Delete ``skip`` (the annotator's last action) and lease its item back to them, when it is still
    an item their queue may offer (or a gold item); else it waits in their queue like any item.
    Inside :func:`judgment_undo`'s transaction; the skip row is locked first, so a double press undoes once."""
    skip = Skip.objects.select_for_update().filter(pk=skip.pk).first()
    if skip is None:
        raise ApplicationError(NOTHING_TO_UNDO)
    skip.delete()
    completion_id = skip.completion_id
    gold = GoldItem.objects.filter(completion_id=completion_id).exists()
    lease = None
    if gold or selectors.item_state_for(project=project, annotator=annotator, completion_id=completion_id)[1]:
        lease = _lease_back(project=project, annotator=annotator, completion_id=completion_id, lease_minutes=lease_minutes)
    return UndoResult(revision=None, lease=lease, skip=skip)


def _lease_back(*, project: Project, annotator, completion_id: int, lease_minutes: int, a_on_left=_DRAW) -> Lease | None:
    """Give the annotator's other unrated leases back to the queue and lease ``completion_id`` (an undone
    item) to them again: their own lease of it renewed, unmarked and set to the project's rating mode now
    (else the card would skip it as another mode's), else a free slot taken the one way slots are taken
    (a gold item's beyond ``ratings_per_item``). Returns the lease they hold now (None
    when the item's slots went to others meanwhile). ``a_on_left``: the side shown before (left out: drawn)."""
    Lease.objects.filter(completion__project=project, annotator=annotator, fulfilled=False).exclude(
        completion_id=completion_id
    ).delete()
    now = timezone.now()
    expires = now + timedelta(minutes=lease_minutes)
    lease = Lease.objects.select_for_update().filter(completion_id=completion_id, annotator=annotator).first()
    if lease is not None:
        # Leased anew in the project's mode now: a lease kept in the mode it was rated in (staff switched
        # likert -> thumbs since) would be skipped as another mode's, and the item not come back.
        Lease.objects.filter(pk=lease.pk).update(
            fulfilled=False, expires_at=expires, created_at=now, rating_mode=project.rating_mode
        )
    else:
        gold = GoldItem.objects.filter(completion_id=completion_id).exists()
        _lease_take_slot(
            project=project,
            annotator=annotator,
            completion_id=completion_id,
            lease_minutes=lease_minutes,
            a_on_left=a_on_left,
            chosen_by=ChosenBy.GOLD if gold else ChosenBy.FIFO,
            slots=_gold_free_slots(completion_id) if gold else None,
        )
    return selectors.lease_held(project=project, annotator=annotator)


@transaction.atomic
def item_skip(*, annotator, completion: Completion) -> None:
    """Give the item back to the queue; it is not offered to this annotator again.

    Accepted for an item the annotator holds a lease on, or that their queue
    would offer them now (like a rating; see :func:`_lease_for_judgment`).

    Raises:
        ApplicationError: a held-out prompt, or an item not in their queue.
    """
    released, _ = Lease.objects.filter(completion=completion, annotator=annotator, fulfilled=False).delete()
    if not released:
        _item_check_open(project=completion.project, annotator=annotator, completion=completion)
    Skip.objects.get_or_create(completion=completion, annotator=annotator)
