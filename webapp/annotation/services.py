"""Writes for annotation: importing prompts, filling the pool, leases, ratings."""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from webapp.errors import ApplicationError
from webapp.policies.models import Project

from . import selectors
from .importers import PromptRow, parse_prompt_file
from .models import Completion, Lease, Prompt, Rating, Skip

log = logging.getLogger(__name__)

LEASE_MINUTES = 10
GENERATION_BATCH = 8


@dataclass(frozen=True)
class ImportResult:
    created: int
    duplicates: int


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@transaction.atomic
def prompts_create(*, project: Project, rows: list[PromptRow]) -> ImportResult:
    """Store validated prompt rows; prompts the project has already are counted, not repeated."""
    existing = set(Prompt.objects.filter(project=project).values_list("text_sha256", flat=True))
    new, seen = [], set()
    for row in rows:
        digest = _sha(row.text)
        if digest in existing or digest in seen:
            continue
        seen.add(digest)
        new.append(Prompt(project=project, text=row.text, text_sha256=digest, source=row.source, held_out=row.held_out))
    Prompt.objects.bulk_create(new)
    return ImportResult(created=len(new), duplicates=len(rows) - len(new))


def prompts_import(*, project: Project, path: str | Path) -> ImportResult:
    """Import a JSONL or CSV prompt file whole, or not at all.

    Raises:
        PromptFileError: a bad line (number and reason for each); nothing is stored.
    """
    return prompts_create(project=project, rows=parse_prompt_file(path))


# --- The completion pool --------------------------------------------------------


def _prompts_to_sample(*, project: Project, n: int, rng: random.Random) -> list[Prompt]:
    """The least-sampled training prompts of the served version first, random among equals."""
    prompts = list(
        Prompt.objects.filter(project=project, held_out=False).annotate(
            n_completions=Count("completions", distinct=True)
        )
    )
    rng.shuffle(prompts)
    prompts.sort(key=lambda p: p.n_completions)
    return prompts[:n]


def completion_pool_refill(*, project: Project, max_new: int | None = None, seed: int | None = None) -> int:
    """Sample completions from the served version until the pool holds ``pool_target``.

    Runs in a Celery worker, never in a web request. Completions are written a
    batch at a time, so the first ones are rateable before the whole deficit is
    sampled. Returns how many completions were created.
    """
    from pgcore.rollout import generate

    from webapp.policies.runtime import policy_for_generation

    project.refresh_from_db()
    version = project.served_version
    deficit = project.pool_target - selectors.pool_size(project=project)
    if max_new is not None:
        deficit = min(deficit, max_new)
    if deficit <= 0:
        return 0
    rng = random.Random(seed)
    prompts = _prompts_to_sample(project=project, n=deficit, rng=rng)
    if not prompts:
        log.warning("project %s has no training prompts to sample", project.slug)
        return 0
    policy = policy_for_generation(version)
    created = 0
    for start in range(0, len(prompts), GENERATION_BATCH):
        batch = prompts[start : start + GENERATION_BATCH]
        rollouts = generate(
            policy,
            [p.text for p in batch],
            max_new_tokens=project.max_new_tokens,
            seed=None if seed is None else seed + start,
            batch_size=GENERATION_BATCH,
        )
        project.refresh_from_db(fields=["served_version"])
        if project.served_version_id != version.pk:
            log.info("served version changed during sampling; stopping this refill")
            break
        Completion.objects.bulk_create(
            Completion(
                project=project,
                prompt=prompt,
                model_version=version,
                text=rollout.text,
                prompt_token_ids=list(rollout.prompt_ids),
                token_ids=list(rollout.completion_ids),
                behaviour_logprobs=[float(x) for x in rollout.behaviour_logprobs],
                finished=bool(rollout.finished),
            )
            for prompt, rollout in zip(batch, rollouts)
        )
        created += len(batch)
    return created


# --- Leases, ratings, skips -------------------------------------------------------


def lease_next(*, project: Project, annotator, lease_minutes: int = LEASE_MINUTES) -> Lease | None:
    """Lease the next completion to ``annotator``, or return the lease they hold.

    Each lease takes a free slot ``0 ≤ slot < ratings_per_item`` of its
    completion; the unique (completion, slot) constraint makes a lost race an
    IntegrityError, after which the next candidate is tried. Expired, unrated
    leases are deleted first, so their items go back to the queue.
    """
    held = selectors.lease_held(project=project, annotator=annotator)
    if held:
        return held
    now = timezone.now()
    Lease.objects.filter(completion__project=project, fulfilled=False, expires_at__lte=now).delete()
    candidates = selectors.queue_for_annotator(project=project, annotator=annotator)[:20]
    for completion in candidates:
        taken = set(completion.leases.values_list("slot", flat=True))
        free = [s for s in range(project.ratings_per_item) if s not in taken]
        for slot in free:
            try:
                with transaction.atomic():
                    lease = Lease.objects.create(
                        completion=completion,
                        annotator=annotator,
                        slot=slot,
                        expires_at=now + timedelta(minutes=lease_minutes),
                    )
            except IntegrityError:
                continue  # somebody took this slot (or this item) a moment ago
            return Lease.objects.select_related("completion__prompt", "completion__model_version").get(pk=lease.pk)
    return None


@transaction.atomic
def rating_create(*, annotator, completion: Completion, score: int, comment: str = "", seconds_spent=None) -> Rating:
    """Store one rating and fulfil the annotator's lease.

    Raises:
        ApplicationError: the score is not 1–5, the annotator rated this item
            already, or the item has all the ratings it needs and was not leased
            to this annotator.
    """
    if not isinstance(score, int) or not 1 <= score <= 5:
        raise ApplicationError("A rating is a whole number from 1 to 5.")
    project = completion.project
    lease = Lease.objects.select_for_update().filter(completion=completion, annotator=annotator).first()
    if lease is None:
        # The lease expired and was reclaimed: keep the work if the item still needs it.
        if completion.ratings.count() >= project.ratings_per_item:
            raise ApplicationError("This item was given to someone else after your lease expired.")
    try:
        with transaction.atomic():
            rating = Rating.objects.create(
                completion=completion, annotator=annotator, score=score, comment=comment, seconds_spent=seconds_spent
            )
    except IntegrityError as exc:
        raise ApplicationError("You have rated this item already.") from exc
    if lease is not None:
        lease.fulfilled = True
        lease.save(update_fields=["fulfilled"])
    return rating


@transaction.atomic
def item_skip(*, annotator, completion: Completion) -> None:
    """Give the item back to the queue; it is not offered to this annotator again."""
    Lease.objects.filter(completion=completion, annotator=annotator, fulfilled=False).delete()
    Skip.objects.get_or_create(completion=completion, annotator=annotator)
