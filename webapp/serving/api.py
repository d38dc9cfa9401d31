"""REST API for production feedback (router mounted by ``webapp/api.py``): ``POST /api/v1/feedback``,
``DELETE /api/v1/feedback/{feedback_id}``.

Feedback names an answer of the OpenAI-compatible routes by its ``id`` (``chatcmpl-…`` or
``cmpl-…``) and ``choice``. Only the API token that received the answer may send feedback
on it; for any other token the answer does not exist (404). A thumb, a score or a preference
becomes a rating with source ``production`` that training uses (weighted by the project's
*production feedback weight*); a comment alone is kept with the feedback.

Feedback can be changed and undone: a new thumb, score or preference on the same answer
replaces the token's earlier judgment of it (the answer's ``replaced`` lists the feedback
ids it withdrew), and ``DELETE /api/v1/feedback/{feedback_id}`` withdraws one. A withdrawn
judgment's rating is deleted (training, exports and reward-model fits no longer see it);
the feedback record stays, with ``withdrawn_at`` set. Once a training run has used a
rating, its feedback can no longer be changed (409).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ninja import Field, Path, Router, Schema, Status
from pydantic import model_validator
from ninja.errors import HttpError

from webapp.annotation.production import FeedbackNotFound, feedback_create, feedback_withdraw
from webapp.apikit import ERRORS, MAX_ID, NO_NUL_PATTERN, LikertScore, api_project

router = Router(tags=["feedback"])

RESPONSE_ID_PATTERN = r"^(chatcmpl|cmpl)-[0-9a-f]{1,32}$"


class FeedbackIn(Schema):
    id: str = Field(pattern=RESPONSE_ID_PATTERN, description="The answer's id, as /v1/chat/completions or /v1/completions returned it.")
    choice: int = Field(default=0, ge=0, le=63, description="Which of the answer's n choices.")
    thumbs: Literal["up", "down"] | None = Field(default=None, description="Thumbs up or down.")
    score: LikertScore | None = Field(default=None, description="A Likert score, 1 (worst) to 5 (best); true is refused.")
    better_than: str | None = Field(
        default=None, pattern=RESPONSE_ID_PATTERN,
        description="Pairwise: this answer is preferred to that one (same prompt and model version, e.g. the "
        "two choices of one request with n=2).",
    )
    better_than_choice: int = Field(default=0, ge=0, le=63, description="The choice of the other answer.")
    comment: str | None = Field(default=None, max_length=2000, pattern=NO_NUL_PATTERN, description="Free text.")

    @model_validator(mode="after")
    def _one_judgment(self):
        judgments = sum(v is not None for v in (self.thumbs, self.score, self.better_than))
        if judgments > 1 or (judgments == 0 and not (self.comment or "").strip()):
            raise ValueError("send one of thumbs, score or better_than, or a comment")
        return self


class FeedbackOut(Schema):
    id: int = Field(description="The feedback's id.")
    kind: Literal["thumbs", "likert", "pairwise", "comment"]
    response_id: str
    choice: int
    rating_id: int | None = Field(description="The rating it became (None for a comment alone, or once withdrawn).")
    created_at: datetime
    withdrawn_at: datetime | None = Field(
        default=None, description="When it was replaced or deleted (then it has no rating; the record stays).")
    replaced: list[int] = Field(
        default=[], description="Ids of this token's earlier feedback on the same answers that this judgment replaced.")


def _out(item, *, replaced=()) -> dict:
    return {"id": item.pk, "kind": item.kind, "response_id": item.completion.response_id,
            "choice": item.completion.choice_index, "rating_id": item.rating_id, "created_at": item.created_at,
            "withdrawn_at": item.withdrawn_at, "replaced": list(replaced)}


@router.post("/feedback", response={201: FeedbackOut, **ERRORS}, summary="Rate an answer of the served model")
def feedback(request, body: FeedbackIn):
    """Thumbs, a Likert score, a preference between two answers, or a comment, on an answer this token received.

    A judgment replaces this token's earlier judgment of the same answer(s) (listed in ``replaced``); a comment
    alone is added. 404: no such answer for this token (or its project is no longer yours); 409: the two answers
    of a preference differ in prompt or version, or the judgment it would replace has trained a model already;
    400: not exactly one judgment or comment."""
    try:
        item = feedback_create(
            api_token=request.auth, response_id=body.id, choice=body.choice,
            thumbs_up=None if body.thumbs is None else body.thumbs == "up", score=body.score,
            better_than=body.better_than, better_than_choice=body.better_than_choice, comment=body.comment or "",
            check_access=lambda project: api_project(request, project.slug),
        )
    except FeedbackNotFound as exc:
        raise HttpError(404, str(exc)) from None
    return Status(201, _out(item, replaced=item.replaced))


@router.delete("/feedback/{feedback_id}", response={200: FeedbackOut, **ERRORS}, summary="Withdraw feedback")
def feedback_delete(request, feedback_id: int = Path(..., ge=1, le=MAX_ID)):
    """Undo one feedback this token sent: its rating is deleted, the record stays with ``withdrawn_at`` set.

    404: no such feedback from this token; 409: withdrawn already, or a training run has used its rating."""
    try:
        item = feedback_withdraw(api_token=request.auth, feedback_id=feedback_id,
                                 check_access=lambda project: api_project(request, project.slug))
    except FeedbackNotFound as exc:
        raise HttpError(404, str(exc)) from None
    return _out(item)
