"""Undo on the annotate page and the queue API reaches the person's own annotation judgments only: feedback
they sent on a production answer (``POST /api/v1/feedback``, with their API token) is changed there, never withdrawn or
leased back to them by an undo, nor listed among their recent judgments."""

from tests.webapp.annotation_helpers import production_answer
from webapp.accounts.services import api_token_create
from webapp.annotation import selectors, services
from webapp.annotation.models import Feedback, Lease, Rating, RatingRevision
from webapp.annotation.production import feedback_create


def test_undo_after_production_feedback_undoes_the_queue_rating_and_leaves_the_feedback(
    project, annotator, make_completion
):
    item = make_completion(project)
    make_completion(project)
    token, _ = api_token_create(user=annotator, name="app")
    production_answer(project, token, "chatcmpl-1a")
    production_answer(project, token, "chatcmpl-2b", n=2)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=2)
    feedback_create(api_token=token, response_id="chatcmpl-1a", score=5)  # after the queue rating
    feedback_create(api_token=token, response_id="chatcmpl-2b", choice=1, better_than="chatcmpl-2b")

    listed = selectors.recent_judgments(project=project, annotator=annotator)
    assert [(r["prompt"], r["judgment"]) for r in listed] == [(item.prompt.text, "2")]
    result = services.judgment_undo(project=project, annotator=annotator)
    assert (result.revision.completion_id, result.revision.score) == (item.pk, 2)
    assert result.lease.completion_id == item.pk
    assert Rating.objects.filter(source="production").count() == 3  # the score and the preference's two
    assert not Lease.objects.filter(completion__source="production").exists()
    assert RatingRevision.objects.count() == 1 and not Feedback.objects.filter(withdrawn_at__isnull=False).exists()
