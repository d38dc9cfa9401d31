"""REST rate: a request that does not fit the project's mode, or a value of the wrong JSON type, is a
400 ``invalid`` naming the field (README: 409 is for well-formed requests a rule refuses), and the
types are JSON's own, as on /v1/: ``"4"`` is no score and ``"yes"`` no thumb."""

import pytest

from tests.webapp.annotation_helpers import make_project
from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.annotation.models import Lease, Rating


def _rate(client, slug, completion, body):
    return client.post(f"/projects/{slug}/queue/{completion.pk}/rate", body)


@pytest.mark.parametrize(
    "body, fields",
    [
        ({"score": None}, ["score"]),
        ({}, ["score"]),
        ({"thumbs_up": True}, ["score", "thumbs_up"]),
        ({"score": "4"}, ["score"]),
        ({"score": 4, "criteria": {"helpful": 4}}, ["criteria"]),
    ],
)
def test_a_likert_rating_without_a_json_number_score_is_a_400_naming_score(
    project, annotator, make_completion, api_for, body, fields
):
    completion = make_completion(project)
    response = _rate(api_for(annotator), project.slug, completion, body)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    assert [f["field"] for f in response.json()["fields"]] == fields
    assert not Rating.objects.exists() and not Lease.objects.exists()


def test_a_thumbs_rating_needs_a_json_boolean_thumbs_up(tiny_model_dir, models_dir, make_user, make_completion, api_for):
    project = make_project(tiny_model_dir, slug="th", mode="thumbs")
    completion = make_completion(project)
    client = api_for(make_user("thumber"))
    for body, fields in [({"score": 4}, ["thumbs_up", "score"]), ({"thumbs_up": "yes"}, ["thumbs_up"]),
                         ({"thumbs_up": 1}, ["thumbs_up"]), ({"thumbs_up": None}, ["thumbs_up"])]:
        response = _rate(client, project.slug, completion, body)
        assert response.status_code == 400 and [f["field"] for f in response.json()["fields"]] == fields, body
    assert _rate(client, project.slug, completion, {"thumbs_up": False}).status_code == 201
    assert Rating.objects.get().thumbs_up is False


def test_a_score_as_a_json_number_is_still_accepted(project, annotator, make_completion, api_for):
    completion = make_completion(project)
    assert _rate(api_for(annotator), project.slug, completion, {"score": 4.0}).status_code == 201
    assert Rating.objects.get().score == 4


def test_the_service_names_the_fields_a_rating_gets_wrong_for_the_mode_and_the_api_answers_with_them(
    project, annotator, make_completion, api_for
):
    """The rules live in ``rating_create``: the page shows its message, the API the fields it names."""
    from webapp.annotation.services import rating_create
    from webapp.errors import InvalidFields

    completion = make_completion(project)
    with pytest.raises(InvalidFields) as refused:
        rating_create(annotator=annotator, completion=completion, thumbs_up=True)
    assert refused.value.message == "A rating is a whole number from 1 to 5."  # as the page has always said
    assert [field for field, _ in refused.value.fields] == ["score", "thumbs_up"]
    answer = _rate(api_for(annotator), project.slug, completion, {"thumbs_up": True}).json()
    assert [(f["field"], f["message"]) for f in answer["fields"]] == [tuple(f) for f in refused.value.fields]
    assert not Rating.objects.exists()
