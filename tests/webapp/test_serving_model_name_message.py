"""A malformed model name on /v1/ is explained in words (slug or slug@N), not as a regular expression."""

import pytest
from django.test import Client

from webapp.accounts.services import api_token_create


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["demo@abc", "demo@-1", "no spaces allowed"])
def test_a_malformed_model_name_is_explained_in_words(project, annotator, model):
    _, secret = api_token_create(user=annotator, name="script")
    answer = Client().post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]},
                           content_type="application/json", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "model" and "slug@N" in error["message"] and "pattern" not in error["message"]
