"""Production answers and the feedback on them: writes for the OpenAI-compatible API.

Every answer the API gives is stored as :class:`Completion` rows (``source`` production,
one per choice, under the answer's ``response_id``, linked to the API token that received
it), with its exact prompt token ids, token ids and behaviour logprobs, so feedback on it
trains the model like any rating. Production answers are never annotation items: they are
stored retired and their prompts (``Prompt.from_production``) are never sampled for the pool.

Feedback (:func:`feedback_create`) is recorded as a :class:`Feedback` row and, for a thumb,
a score or a preference, a :class:`Rating` with ``source`` production whose annotator is the
token's user. Only the token that received an answer may rate it; for anyone else the
answer does not exist (:class:`FeedbackNotFound`, a 404). A new judgment of the same answer
replaces the earlier one, and :func:`feedback_withdraw` undoes one; either keeps the
feedback row (``withdrawn_at``) and deletes its rating.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from webapp.errors import ApplicationError
from webapp.policies.models import ModelVersion, Project
from webapp.text import without_nul

from .models import Choice, Comparison, Completion, Feedback, Pair, Prompt, Rating


class FeedbackNotFound(Exception):
    """No answer with that id and choice was given to this token."""


@dataclass(frozen=True)
class AnswerChoice:
    """One choice of an answer, as the inference process returned it."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finished: bool


@transaction.atomic
def production_answer_store(
    *, project: Project, version_number: int, api_token, response_id: str, prompt_text: str,
    prompt_token_ids: list[int], choices: list[AnswerChoice],
) -> list[Completion]:
    """Store one API answer: its prompt (reused when the project has that text) and one completion per choice.

    A choice with no tokens (the model ended at once) is stored too; it has nothing to train on
    and training skips it. Returns the completions in choice order.
    """
    text = without_nul(prompt_text)
    digest = Prompt.digest(text)
    prompt = Prompt.objects.filter(project=project, text_sha256=digest).first()
    if prompt is None:
        try:
            with transaction.atomic():
                prompt = Prompt.objects.create(project=project, text=text, text_sha256=digest, source="production",
                                               from_production=True)
        except IntegrityError:  # the same text stored by a concurrent answer
            prompt = Prompt.objects.get(project=project, text_sha256=digest)
    version = ModelVersion.objects.get(project=project, number=version_number)
    now = timezone.now()
    return Completion.objects.bulk_create([
        Completion(
            project=project, prompt=prompt, model_version=version, text=without_nul(c.text),
            prompt_token_ids=list(prompt_token_ids), token_ids=list(c.token_ids),
            behaviour_logprobs=list(c.logprobs), finished=c.finished, retired_at=now,
            source=Completion.Source.PRODUCTION, response_id=response_id, choice_index=c.index, api_token=api_token,
        )
        for c in choices
    ])


def _answer(*, api_token, response_id: str, choice: int) -> Completion:
    completion = (
        Completion.objects.select_related("project")
        .filter(source=Completion.Source.PRODUCTION, response_id=response_id, choice_index=choice, api_token=api_token)
        .first()
    )
    if completion is None:
        raise FeedbackNotFound(f"No answer {response_id!r} (choice {choice}) was given to this token.")
    return completion


@transaction.atomic
def feedback_create(
    *, api_token, response_id: str, choice: int = 0, thumbs_up: bool | None = None, score: int | None = None,
    better_than: str | None = None, better_than_choice: int = 0, comment: str = "", check_access=None,
) -> Feedback:
    """Record feedback from the token that received an answer; a judgment also becomes a production Rating.

    Exactly one of ``thumbs_up``, ``score`` (Likert 1-5) or ``better_than`` (this answer was
    preferred to that one: a pairwise decision, winner +1 / loser -1 in training), or a
    ``comment`` alone. A comment may come with a judgment. Everything is stored in one
    transaction, or nothing.

    A judgment replaces the token's earlier judgments of the same answers (this one, and
    ``better_than``'s): they are withdrawn as by :func:`feedback_withdraw`, so the newest word
    of the user is the one training uses. A comment alone replaces nothing.

    ``check_access(project)``, when given, is called before anything is stored (the API's
    membership check: a token whose user left the project may no longer rate its answers).

    Raises:
        FeedbackNotFound: either answer is unknown or was given to another token.
        ApplicationError: not exactly one judgment (or a comment), a score outside 1-5, a
            preference between answers to different prompts or from different versions, or
            a judgment it would replace has been used by a training run already.
    """
    judgments = [v is not None for v in (thumbs_up, score, better_than)]
    comment = without_nul(comment or "").strip()
    if sum(judgments) > 1 or (not any(judgments) and not comment):
        raise ApplicationError("Send one of thumbs, score or better_than, or a comment.")
    if score is not None and (isinstance(score, bool) or not 1 <= int(score) <= 5):
        raise ApplicationError("A score is a whole number from 1 to 5.")
    completion = _answer(api_token=api_token, response_id=response_id, choice=choice)
    if check_access is not None:
        check_access(completion.project)
    user = api_token.user
    feedback = Feedback(completion=completion, api_token=api_token, comment=comment, thumbs_up=thumbs_up, score=score)
    other = None
    if better_than is not None:
        other = _answer(api_token=api_token, response_id=better_than, choice=better_than_choice)
    if any(judgments):
        feedback.replaced = _withdraw_judgments_of(api_token=api_token, completions=[completion, other])
    else:
        feedback.replaced = []
    try:
        with transaction.atomic():
            if thumbs_up is not None or score is not None:
                feedback.kind = Feedback.Kind.THUMBS if thumbs_up is not None else Feedback.Kind.LIKERT
                feedback.rating = Rating.objects.create(
                    completion=completion, annotator=user, score=score, thumbs_up=thumbs_up, comment=comment,
                    source=Rating.Source.PRODUCTION,
                )
            elif other is not None:
                feedback.kind, feedback.other = Feedback.Kind.PAIRWISE, other
                feedback.rating = _preference(winner=completion, loser=other, user=user, comment=comment)
            else:
                feedback.kind = Feedback.Kind.COMMENT
            feedback.save()
    except IntegrityError as exc:  # a concurrent judgment of the same answer by the same token came first
        raise ApplicationError("This answer was judged by a concurrent request; send the change again.") from exc
    return feedback


def _withdraw(feedback: Feedback, *, now) -> None:
    """Delete a judgment's rating (a preference's comparison, with both sides) and mark the feedback withdrawn."""
    rating = feedback.rating
    if rating is not None:
        ratings = rating.comparison.ratings.all() if rating.comparison_id else Rating.objects.filter(pk=rating.pk)
        if ratings.filter(training_runs__isnull=False).exists():
            raise ApplicationError(
                f"Feedback {feedback.pk} has been used by a training run already; it can no longer be changed."
            )
        if rating.comparison_id:
            rating.comparison.delete()  # both ratings of the preference go with it
        else:
            rating.delete()
    Feedback.objects.filter(pk=feedback.pk).update(withdrawn_at=now, rating=None)
    feedback.withdrawn_at, feedback.rating = now, None


def _withdraw_judgments_of(*, api_token, completions: list[Completion | None]) -> list[int]:
    """Withdraw the token's live judgments that touch any of ``completions``; their feedback ids."""
    ids = [c.pk for c in completions if c is not None]
    live = (
        Feedback.objects.select_for_update(of=("self",))
        .select_related("rating__comparison")
        .filter(api_token=api_token, withdrawn_at__isnull=True)
        .exclude(kind=Feedback.Kind.COMMENT)
        .filter(models.Q(completion_id__in=ids) | models.Q(other_id__in=ids))
        .order_by("pk")
    )
    now = timezone.now()
    withdrawn = []
    for feedback in live:
        _withdraw(feedback, now=now)
        withdrawn.append(feedback.pk)
    return withdrawn


@transaction.atomic
def feedback_withdraw(*, api_token, feedback_id: int, check_access=None) -> Feedback:
    """Undo one feedback of this token: its rating (both sides of a preference) is deleted, the record stays.

    The :class:`Feedback` row keeps what was sent, with ``withdrawn_at`` set and no rating, so
    training, exports and the reward model no longer see the judgment. A comment is withdrawn
    the same way (it had no rating). ``check_access(project)`` as in :func:`feedback_create`.

    Raises:
        FeedbackNotFound: no feedback with that id was sent with this token.
        ApplicationError: it was withdrawn already, or a training run has used its rating.
    """
    feedback = (
        Feedback.objects.select_for_update(of=("self",))
        .select_related("completion__project", "rating__comparison")
        .filter(pk=feedback_id, api_token=api_token)
        .first()
    )
    if feedback is None:
        raise FeedbackNotFound(f"No feedback {feedback_id} was sent with this token.")
    if check_access is not None:
        check_access(feedback.completion.project)
    if feedback.withdrawn_at is not None:
        raise ApplicationError(f"Feedback {feedback_id} was withdrawn already.")
    _withdraw(feedback, now=timezone.now())
    return feedback


def _preference(*, winner: Completion, loser: Completion, user, comment: str) -> Rating:
    """A pairwise decision ``winner`` over ``loser`` as the pages store one: a Pair, a Comparison, two Ratings."""
    if winner.pk == loser.pk:
        raise ApplicationError("A preference compares two different answers.")
    if (winner.prompt_id, winner.model_version_id) != (loser.prompt_id, loser.model_version_id):
        raise ApplicationError(
            "A preference compares two answers to the same prompt from the same model version "
            "(for example the choices of one request with n=2)."
        )
    a, b = sorted((winner, loser), key=lambda c: c.pk)
    pair = Pair.objects.filter(completion_a=a, completion_b=b).first() or Pair.objects.create(
        project_id=a.project_id, completion_a=a, completion_b=b
    )
    comparison = Comparison.objects.create(
        pair=pair, annotator=user, choice=Choice.A if winner.pk == a.pk else Choice.B, a_on_left=True, comment=comment
    )
    Rating.objects.bulk_create(
        Rating(completion_id=cid, annotator=user, comparison=comparison, source=Rating.Source.PRODUCTION)
        for cid in (a.pk, b.pk)
    )
    return Rating.objects.get(comparison=comparison, completion=winner)
