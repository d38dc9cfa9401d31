"""The gold item form refuses what is no annotation item in plain words, not in an answer's JSON syntax:
a production answer (a reply to an API request: the queue never offers it) and, in pairwise mode, a
pair's second output (a pair is named by its first)."""

from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation.models import Completion, GoldItem
from webapp.policies.models import AuditEvent


def _gold_post(client, project, data):
    return client.post(f"/p/{project.slug}/figures/gold/", data)


def test_a_production_answer_is_refused_as_no_annotation_item(project, make_completion, staff_client):
    # What a /v1/ request with n=2 stores: two production answers, paired.
    pair = make_pair(project, make_completion)
    Completion.objects.filter(pk__in=[pair.completion_a_id, pair.completion_b_id]).update(
        source=Completion.Source.PRODUCTION
    )
    for item in (pair.completion_a_id, pair.completion_b_id):
        response = _gold_post(staff_client, project, {"kind": "likert", "completion": item, "score": "4"})
        body = response.content.decode()
        assert response.status_code == 400
        assert f"#{item} is a production answer (a reply to an API request), not an annotation item" in body
        assert "{&quot;" not in body and '{"' not in body.split("production answer")[1][:300]  # no JSON syntax
    assert not GoldItem.objects.exists() and not AuditEvent.objects.filter(action="gold_set").exists()


def test_a_pairs_second_output_is_refused_with_the_number_to_use(tiny_model_dir, models_dir, make_completion, make_user, client):
    project = make_project(tiny_model_dir, slug="gpb", mode="pairwise")
    client.force_login(make_user("boss3", staff=True))
    pair = make_pair(project, make_completion)
    response = _gold_post(client, project, {"kind": "pairwise", "completion": pair.completion_b_id, "choice": "a"})
    assert response.status_code == 400
    assert f"#{pair.completion_b_id} is the second output (B) of a pair" in response.content.decode()
    assert f"use #{pair.completion_a_id}" in response.content.decode()
    assert not GoldItem.objects.exists()
