"""The rubric editor: on the setup page and in the REST API, through one audited service; a rubric
changed mid-way leaves earlier ratings with the rubric they were given under."""

import json

import pytest

from tests.webapp.annotation_helpers import make_project
from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.annotation import services
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, Project
from webapp.training import exports


@pytest.fixture
def rubric_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="rbe", mode="rubric", rubric=[{"name": "helpful", "weight": 3}, {"name": "fluent", "weight": 1}])


def _rows(**criteria):
    """POST data for the editor: criteria as name=(weight, description), in order."""
    data = {}
    for i, (name, (weight, description)) in enumerate(criteria.items()):
        data.update({f"name_{i}": name, f"weight_{i}": weight, f"description_{i}": description})
    return data


def test_the_setup_page_shows_the_rubric_and_saves_a_new_one_audited(rubric_project, staff_client):
    page = staff_client.get(f"/staff/p/{rubric_project.slug}/setup/").content.decode()
    assert 'id="rubric-form"' in page and 'value="helpful"' in page and 'value="3.0"' in page
    data = _rows(helpful=("2", "answers the prompt"), safe=("0.5", "nothing harmful"))
    data.update({"name_2": "", "weight_2": "1"})  # a blank row is left out
    response = staff_client.post(f"/staff/p/{rubric_project.slug}/setup/rubric/", data)
    assert response.status_code == 302
    rubric_project.refresh_from_db()
    assert rubric_project.rubric == [
        {"name": "helpful", "weight": 2.0, "description": "answers the prompt"},
        {"name": "safe", "weight": 0.5, "description": "nothing harmful"},
    ]
    event = AuditEvent.objects.get(target="rubric")
    assert [c["name"] for c in event.detail["rubric"][0]] == ["helpful", "fluent"]
    assert [c["name"] for c in event.detail["rubric"][1]] == ["helpful", "safe"]


@pytest.mark.parametrize(
    "data, message",
    [
        (_rows(helpful=("1", ""), **{"helpful ": ("2", "")}), "names must be unique"),
        (_rows(helpful=("0", "")), "needs a weight from 0.01 to 1000"),
        (_rows(helpful=("-1", "")), "needs a weight from 0.01 to 1000"),
        (_rows(helpful=("1e-300", "")), "needs a weight from 0.01 to 1000"),  # would vanish from the reward
        (_rows(helpful=("heavy", "")), "Enter a number"),
        ({}, "1 to 8 criteria"),  # a rubric-mode project cannot lose its rubric
        (_rows(**{"Tone\nstyle": ("1", "")}), "contains a control character"),  # the rate form could never match it
        (_rows(**{"Tone\r\nstyle": ("1", "")}), "contains a control character"),
        (_rows(helpful=("1", "kind\nand clear")), "a description is one line of text"),  # as a name
    ],
)
def test_a_bad_rubric_is_refused_with_the_reason_shown_and_nothing_changes(rubric_project, staff_client, data, message):
    before = list(rubric_project.rubric)
    response = staff_client.post(f"/staff/p/{rubric_project.slug}/setup/rubric/", data)
    assert response.status_code == 400 and message in response.content.decode()
    if data:  # what was typed is shown again
        assert f'value="{data["name_0"]}"' in response.content.decode()
    rubric_project.refresh_from_db()
    assert rubric_project.rubric == before and not AuditEvent.objects.filter(target="rubric").exists()


def test_the_api_reads_the_rubric_for_members_and_lets_staff_replace_it(rubric_project, annotator, staff_user, api_for):
    member = api_for(annotator)
    read = member.get(f"/projects/{rubric_project.slug}").json()
    assert read["rubric"] == [{"name": "helpful", "weight": 3.0, "description": ""}, {"name": "fluent", "weight": 1.0, "description": ""}]
    new = {"rubric": [{"name": "concise", "weight": 2, "description": "no padding"}]}
    assert member.put(f"/projects/{rubric_project.slug}/rubric", new).status_code == 403
    staff = api_for(staff_user)
    response = staff.put(f"/projects/{rubric_project.slug}/rubric", new)
    assert response.status_code == 200, response.content
    assert response.json()["rubric"] == [{"name": "concise", "weight": 2.0, "description": "no padding"}]
    assert Project.objects.get(pk=rubric_project.pk).rubric == response.json()["rubric"]
    assert AuditEvent.objects.get(target="rubric").actor == staff_user


@pytest.mark.parametrize(
    "body, status, text",
    [
        ({"rubric": [{"name": "a", "weight": 1}, {"name": "a", "weight": 2}]}, 400, "names must be unique"),
        ({"rubric": [{"name": "a", "weight": 0}]}, 400, "needs a weight from 0.01 to 1000"),
        ({"rubric": [{"name": "a", "weight": 1e-300}]}, 400, "needs a weight from 0.01 to 1000"),
        ({"rubric": []}, 400, "1 to 8 criteria"),
        ({"rubric": [{"name": f"c{i}", "weight": 1} for i in range(9)]}, 400, "rubric"),
        ({"rubric": [{"name": "a", "weight": 1, "colour": "red"}]}, 400, "colour"),
        ({"rubric": [{"name": "a", "weight": 1}, {"name": "Tone\nstyle", "weight": 1}]}, 400,
         "Criterion 2's name ('Tone\\nstyle') contains a control character"),
        ({"rubric": [{"name": "Tone\tstyle", "weight": 1}]}, 400, "contains a control character"),
        ({"rubric": [{"name": "a", "weight": 1, "description": "kind\nand clear"}]}, 400,
         "Criterion 1's description ('kind\\nand clear') contains a control character"),
        ({"rubric": [{"name": "a", "weight": 1, "description": "kind\tclear"}]}, 400, "a description is one line of text"),
    ],
)
def test_the_api_refuses_a_bad_rubric_with_a_400_and_changes_nothing(rubric_project, staff_user, api_for, body, status, text):
    response = api_for(staff_user).put(f"/projects/{rubric_project.slug}/rubric", body)
    assert response.status_code == status and text in response.json()["message"]
    assert Project.objects.get(pk=rubric_project.pk).rubric[0]["name"] == "helpful"


def test_an_empty_rubric_clears_it_in_another_mode(project, staff_user):
    policy_services.project_rubric_update(project=project, rubric=[{"name": "x", "weight": 1}], user=staff_user)
    assert policy_services.project_rubric_update(project=project, rubric=[], user=staff_user).rubric == []


def test_a_rubric_changed_through_the_editor_mid_way_keeps_earlier_ratings_with_their_own_rubric(
    rubric_project, annotator, make_completion, staff_client
):
    first = make_completion(rubric_project, text="rated under the first rubric")
    services.lease_next(project=rubric_project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=first, criteria={"helpful": 5, "fluent": 1})
    assert staff_client.post(f"/staff/p/{rubric_project.slug}/setup/rubric/", _rows(helpful=("1", ""), safe=("1", ""))).status_code == 302
    rubric_project.refresh_from_db()
    second = make_completion(rubric_project, text="rated under the second rubric")
    services.lease_next(project=rubric_project, annotator=annotator)
    with pytest.raises(ApplicationError):  # the old criteria are no longer asked for
        services.rating_create(annotator=annotator, completion=second, criteria={"helpful": 1, "fluent": 1})
    services.rating_create(annotator=annotator, completion=second, criteria={"helpful": 1, "safe": 2})
    text, n = exports.ratings_jsonl(project=rubric_project, fmt="judgments")
    rows = {row["completion"]: row for row in map(json.loads, text.splitlines())}
    assert n == 2
    assert rows["rated under the first rubric"]["criteria"] == [
        {"name": "helpful", "weight": 3.0, "score": 5}, {"name": "fluent", "weight": 1.0, "score": 1},
    ]
    assert rows["rated under the first rubric"]["overall"] == 4.0
    assert [c["name"] for c in rows["rated under the second rubric"]["criteria"]] == ["helpful", "safe"]
