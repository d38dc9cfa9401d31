"""The annotate page's "rated today" and its undo button count the person's annotation judgments only:
feedback they sent on a production answer (``POST /api/v1/feedback`` with their own API token, source
production) is neither counted as rated today nor offered to undo."""

import pytest

from tests.webapp.annotation_helpers import production_answer
from webapp.accounts.services import api_token_create
from webapp.annotation import selectors, services
from webapp.annotation.production import feedback_create


def send_feedback(project, annotator):
    token, _ = api_token_create(user=annotator, name="app")
    production_answer(project, token, "chatcmpl-1a")
    production_answer(project, token, "chatcmpl-2b", n=2)
    feedback_create(api_token=token, response_id="chatcmpl-1a", score=5)
    feedback_create(api_token=token, response_id="chatcmpl-2b", choice=1, better_than="chatcmpl-2b")


@pytest.mark.parametrize("mode", ["likert", "pairwise"])
def test_production_feedback_is_not_rated_today_nor_undoable(project, annotator, mode):
    project.rating_mode = mode
    project.save(update_fields=["rating_mode"])
    send_feedback(project, annotator)

    progress = selectors.annotator_progress(project=project, annotator=annotator)
    assert (progress["today"], progress["can_undo"]) == (0, False)


def test_rated_today_counts_the_queue_rating_beside_production_feedback(project, annotator, make_completion):
    item = make_completion(project)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=2)
    send_feedback(project, annotator)

    progress = selectors.annotator_progress(project=project, annotator=annotator)
    assert (progress["today"], progress["can_undo"]) == (1, True)
