"""A field the REST API refuses by its pattern is explained in words, never as the regular expression."""

import pytest

from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture


@pytest.fixture
def staff_api(staff_user, api_for):
    return api_for(staff_user)


def test_a_blank_serve_reason_is_explained_in_words(project, staff_api):
    answer = staff_api.post(f"/projects/{project.slug}/versions/0/serve", {"reason": "   "})
    assert answer.status_code == 400
    (field,) = answer.json()["fields"]
    assert field == {"field": "reason", "message": "Should be a few words, not only spaces, without NUL characters."}
    assert "pattern" not in answer.json()["message"]


def test_a_nul_in_a_comment_and_a_bad_answer_id_are_explained_in_words(project, annotator, api_for, make_completion):
    api = api_for(annotator)
    item = make_completion(project)
    answer = api.post(f"/projects/{project.slug}/queue/{item.pk}/rate", {"score": 3, "comment": "a\x00b"})
    assert answer.status_code == 400 and answer.json()["fields"][0]["message"] == "Should be text without NUL characters."
    feedback = api.post("/feedback", {"id": "chatcmpl-XYZ", "thumbs": "up"})
    assert feedback.status_code == 400 and "chatcmpl-… or cmpl-…" in feedback.json()["message"]
    assert "pattern" not in feedback.json()["message"]
