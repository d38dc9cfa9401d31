"""REST API for prompts and the annotation queue (router mounted by ``webapp/api.py``).

The same services as the annotator's page: an item is leased with
``lease_next``, judged with ``rating_create`` / ``comparison_create`` / ``ranking_create``,
skipped with ``item_skip``, and the last judgment undone with
``judgment_undo``, so an API rating and a page rating are the same row under
the same rules (one per annotator and item, only for an item the annotator
holds or may be offered, never a held-out prompt).
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path as FilePath
from typing import Literal

from django.conf import settings
from django.shortcuts import get_object_or_404
from ninja import Field, File, Path, Router, Schema, Status
from ninja.errors import HttpError, ValidationError
from ninja.files import UploadedFile
from pydantic import StrictBool

from webapp.apikit import ERRORS, MAX_ID, NO_NUL_PATTERN, LikertScore, SLUG_PATTERN, api_project
from webapp.errors import ApplicationError
from webapp.policies.models import RatingMode

from . import selectors, services
from .models import Choice, Completion

router = Router(tags=["annotation"])

Slug = Path(..., pattern=SLUG_PATTERN)
CompletionId = Path(..., ge=1, le=MAX_ID)
COMMENT_MAX_CHARS = 2000
SECONDS_MAX = 24 * 3600


class ImportOut(Schema):
    created: int = Field(description="New prompts stored.")
    duplicates: int = Field(description="Prompts the project had already (or repeated in the file), not stored again.")
    text_fields: dict[str, int] = Field(
        description="The column (CSV) or key (JSONL) each prompt's text was read from, with how many rows it gave: "
        "'text', else 'prompt' where there is no 'text'."
    )
    unread_fields: list[str] = Field(description="Columns or keys of the file that the import did not read, sorted.")


@router.post(
    "/projects/{slug}/prompts/import",
    response={201: ImportOut, **ERRORS},
    summary="Import prompts from a JSONL or CSV file (staff)",
)
def prompts_import(request, slug: str = Slug, file: UploadedFile = File(...)):
    """Import a prompt file whole or not at all, with the same parser, validation and caps as
    ``manage.py import_prompts`` (``services.prompts_import``).

    ``file`` (multipart) is ``.jsonl`` (one ``{"text": ..., "source": ..., "held_out": false}`` per
    line) or ``.csv`` (a ``text`` column; optional ``source``, ``held_out``), told apart by its name;
    ``prompt`` is read where there is no ``text``, and the answer says which was read (``text_fields``)
    and which columns were not (``unread_fields``), as the page's import preview does.
    A file the importer refuses (unknown format, a cap exceeded, bad lines) is a 400 naming ``file``
    (each bad line in ``fields``); nothing is stored. With ``REWARDLOOP_IMPORT_MAX_BYTES`` set, a
    larger upload is a 413 before it is read.
    """
    project, _ = api_project(request, slug, staff=True)
    max_bytes = getattr(settings, "REWARDLOOP_IMPORT_MAX_BYTES", None)
    if max_bytes is not None and file.size is not None and file.size > max_bytes:
        raise HttpError(413, f"The file is {file.size} bytes; the limit is {max_bytes} (REWARDLOOP_IMPORT_MAX_BYTES).")
    name = FilePath(file.name or "").name  # the extension tells the format; the name appears in errors
    if name in ("", ".", "..") or "\x00" in name or len(name.encode()) > 200:
        name = "upload" + FilePath(name.replace("\x00", "")[-20:]).suffix
    with tempfile.TemporaryDirectory(prefix="api-import-") as folder:
        path = FilePath(folder) / name
        with path.open("wb") as out:
            shutil.copyfileobj(file, out, length=1 << 20)
        try:
            result = services.prompts_import(project=project, path=path)
        except ApplicationError as exc:  # every refusal of the importer is about the file: a 400 naming it
            reasons = [f"line {line}: {reason}" for line, reason in getattr(exc, "errors", [])] or [exc.message]
            raise ValidationError([{"loc": ("file", "file"), "msg": reason} for reason in reasons]) from exc
    return Status(201, {
        "created": result.created, "duplicates": result.duplicates,
        "text_fields": result.text_fields, "unread_fields": list(result.unread_fields),
    })


# --- The queue ------------------------------------------------------------------


class CompletionOut(Schema):
    id: int
    text: str
    finished: bool = Field(description="False when the completion was cut at the length limit.")


class PairOut(Schema):
    a: CompletionOut
    b: CompletionOut
    a_on_left: bool | None = Field(description="Which side a screen should show A on (drawn per lease).")


class ItemOut(Schema):
    """An item to judge, blind as the page's card: neither the model version that wrote it nor how it
    was sampled (the history page shows both after rating)."""

    completion_id: int = Field(description="What to rate, compare or skip (a pair's completion A).")
    mode: str = Field(description="likert, thumbs, rubric, pairwise or ranking: which call judges it.")
    prompt: str
    completion: CompletionOut
    pair: PairOut | None = Field(description="Pairwise mode: the two completions to compare.")
    ranked: list[CompletionOut] | None = Field(
        None, description="Ranking mode: the completions to put in order, in the order to show them (drawn per lease)."
    )
    lease_expires_at: datetime = Field(description="Until then the item is held for you; then it may go to others.")


class ProgressOut(Schema):
    today: int
    queue: int = Field(description="Items waiting for you after the one you hold (not counting it), exact up to 100.")
    queue_capped: bool
    can_undo: bool


class NextOut(Schema):
    item: ItemOut | None = Field(description="None: nothing to rate right now (the pool is being refilled).")
    progress: ProgressOut


def _item_out(project, lease) -> dict | None:
    if lease is None:
        return None
    completion = lease.completion
    pair = selectors.pair_of(completion) if project.rating_mode == RatingMode.PAIRWISE else None
    one = {"id": completion.pk, "text": completion.text, "finished": completion.finished}
    return {
        "completion_id": completion.pk,
        "mode": project.rating_mode,
        "prompt": completion.prompt.text,
        "completion": one,
        "pair": None
        if pair is None
        else {
            "a": one,
            "b": {"id": pair.completion_b.pk, "text": pair.completion_b.text, "finished": pair.completion_b.finished},
            "a_on_left": lease.a_on_left,
        },
        "ranked": None
        if getattr(completion, "ranked_members", None) is None
        else [{"id": m.pk, "text": m.text, "finished": m.finished} for m in completion.ranked_members],
        "lease_expires_at": lease.expires_at,
    }


@router.post("/projects/{slug}/queue/next", response={200: NextOut, **ERRORS}, summary="Lease the next item")
def queue_next(request, slug: str = Slug):
    """Lease the next item to rate, or return the one you hold (the same call as the page's next item).

    ``item`` is null when nothing is waiting; ask again in a few seconds.
    """
    project, _ = api_project(request, slug)
    lease = services.lease_next(project=project, annotator=request.user)
    services.pool_refill_nudge(project=project, queue_empty=lease is None)
    progress = selectors.annotator_progress(project=project, annotator=request.user)
    return {"item": _item_out(project, lease), "progress": progress}


class _JudgmentIn(Schema):
    """What every judgment (rating, comparison, ranking) carries besides its answer."""

    model_config = {"extra": "forbid"}

    comment: str = Field("", max_length=COMMENT_MAX_CHARS, pattern=NO_NUL_PATTERN)
    seconds_spent: float | None = Field(None, ge=0, le=SECONDS_MAX, description="Default: since the item was leased.")

    def extras(self) -> dict:
        """The keyword arguments every judgment service takes for them (the comment stripped)."""
        return {"comment": self.comment.strip(), "seconds_spent": self.seconds_spent}


class RateIn(_JudgmentIn):
    score: LikertScore | None = Field(None, description="Likert projects: 1 to 5 (a JSON number; true and \"4\" are refused).")
    thumbs_up: StrictBool | None = Field(None, description="Thumbs projects: true (up) or false (down), JSON booleans only.")
    criteria: dict[str, LikertScore] | None = Field(
        None, max_length=8,
        description='Rubric projects: every criterion of the project\'s rubric by name, each 1 to 5, e.g. {"helpful": 4, "fluent": 5}.',
    )


class CriterionOut(Schema):
    name: str
    weight: float
    score: int


class RatingOut(Schema):
    id: int
    completion_id: int
    score: int | None
    thumbs_up: bool | None
    criteria: list[CriterionOut] | None = Field(None, description="Rubric ratings: each criterion's name, weight and score as given.")
    comment: str
    seconds_spent: float | None
    created_at: datetime


def _completion(project, completion_id) -> Completion:
    completion = get_object_or_404(Completion, pk=completion_id, project=project)
    completion.project = project
    return completion


def _item_led_by(project, completion_id, *, find, missing: str):
    """The pair or ranking group that ``find`` (a selector) gives for the project's completion
    ``completion_id`` (its A, or its anchor), with ``project`` set; 404 ``missing`` when there is none."""
    item = find(_completion(project, completion_id))
    if item is None:
        raise HttpError(404, missing)
    item.project = project
    return item


@router.post(
    "/projects/{slug}/queue/{completion_id}/rate",
    response={201: RatingOut, **ERRORS},
    summary="Rate an item (Likert, thumbs or rubric)",
)
def rate(request, body: RateIn, slug: str = Slug, completion_id: int = CompletionId):
    """Store your rating of the item (``services.rating_create``, as the page): one per item,
    only for an item you hold or your queue would offer you; fulfils your lease. The project's mode
    names the one field to send (Likert ``score``, thumbs ``thumbs_up``, rubric ``criteria``); without
    it, or with another mode's field, a 400 names the field (the service's rule, ``InvalidFields``)."""
    project, _ = api_project(request, slug)
    rating = services.rating_create(
        annotator=request.user,
        completion=_completion(project, completion_id),
        score=body.score,
        thumbs_up=body.thumbs_up,
        criteria=body.criteria,
        **body.extras(),
    )
    return Status(201, rating)


class CompareIn(_JudgmentIn):
    choice: Literal[tuple(Choice.values)] = Field(description="a, b, tie or both_bad (names the pair's completions).")
    a_on_left: bool | None = Field(
        None, description="Which side you showed A on; only used when your lease is gone (the lease's side wins)."
    )


class ComparisonOut(Schema):
    id: int
    pair_id: int
    choice: str
    a_on_left: bool
    comment: str
    created_at: datetime


@router.post(
    "/projects/{slug}/queue/{completion_id}/compare",
    response={201: ComparisonOut, **ERRORS},
    summary="Compare a pair (pairwise projects)",
)
def compare(request, body: CompareIn, slug: str = Slug, completion_id: int = CompletionId):
    """Store your decision on the pair whose completion A is ``completion_id``
    (``services.comparison_create``, as the page)."""
    project, _ = api_project(request, slug)
    pair = _item_led_by(project, completion_id, find=selectors.pair_of, missing="No pair has this completion as its A.")
    comparison = services.comparison_create(
        annotator=request.user,
        pair=pair,
        choice=body.choice,
        a_on_left=body.a_on_left,
        **body.extras(),
    )
    return Status(201, comparison)


class RankIn(_JudgmentIn):
    order: list[int] = Field(description="Every completion of the item's ``ranked`` list, by id, best first.")


class RankingOut(Schema):
    id: int
    group_id: int
    order: list[int]
    comment: str
    created_at: datetime


@router.post(
    "/projects/{slug}/queue/{completion_id}/rank",
    response={201: RankingOut, **ERRORS},
    summary="Rank an item's completions (ranking projects)",
)
def rank(request, body: RankIn, slug: str = Slug, completion_id: int = CompletionId):
    """Store your order of the completions of the item whose anchor is ``completion_id``
    (``services.ranking_create``, as the page): stored with the pairwise comparisons it implies."""
    project, _ = api_project(request, slug)
    group = _item_led_by(
        project, completion_id, find=selectors.rank_group_of, missing="No ranking item has this completion as its anchor."
    )
    ranking = services.ranking_create(
        annotator=request.user,
        group=group,
        order=body.order,
        **body.extras(),
    )
    return Status(201, ranking)


@router.post(
    "/projects/{slug}/queue/{completion_id}/skip", response={204: None, **ERRORS}, summary="Skip an item"
)
def skip(request, slug: str = Slug, completion_id: int = CompletionId):
    """Give the item back to the queue; it is not offered to you again (``services.item_skip``)."""
    project, _ = api_project(request, slug)
    services.item_skip(annotator=request.user, completion=_completion(project, completion_id))
    return Status(204, None)


class UndoneOut(Schema):
    action: Literal["judgment", "skip"] = Field(
        description="What was undone: your last judgment (its values below) or your last skip (no values)."
    )
    completion_id: int
    score: int | None
    thumbs_up: bool | None
    choice: str
    order: list[int] | None = Field(None, description="Ranking mode: the undone order, best first.")
    rated_at: datetime = Field(description="When the undone judgment (or skip) was made.")


class UndoOut(Schema):
    undone: UndoneOut
    item: ItemOut | None = Field(description="The undone item, leased back to you to rate again.")


@router.post("/projects/{slug}/queue/undo", response={200: UndoOut, **ERRORS}, summary="Undo my last judgment or skip")
def undo(request, slug: str = Slug):
    """Undo your last action (younger than 10 minutes) and get its item back (``services.judgment_undo``):
    a judgment not yet trained on is withdrawn and kept as a revision; a skip is taken back."""
    project, _ = api_project(request, slug)
    result = services.judgment_undo(project=project, annotator=request.user)
    revision, skip = result.revision, result.skip
    if skip is not None:
        undone = {"action": "skip", "completion_id": skip.completion_id, "score": None, "thumbs_up": None,
                  "choice": "", "order": None, "rated_at": skip.created_at}
    else:
        undone = {
            "action": "judgment",
            "completion_id": revision.completion_id,
            "score": revision.score,
            "thumbs_up": revision.thumbs_up,
            "choice": revision.choice,
            "order": revision.order,
            "rated_at": revision.rated_at,
        }
    return {"undone": undone, "item": _item_out(project, result.lease)}
