"""Staff add gold items and change their answers on the figures page; every change is audited."""

import pytest

from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation import services
from webapp.annotation.models import GoldItem
from webapp.policies.models import AuditEvent


def _url(project, suffix=""):
    return f"/p/{project.slug}/figures/{suffix}"


def test_staff_add_a_likert_gold_item_and_it_is_listed_with_its_answer(project, make_completion, staff_client):
    item = make_completion(project, text="a plainly great answer")
    response = staff_client.post(_url(project, "gold/"), {"kind": "likert", "completion": item.pk, "score": "4", "tolerance": "1", "note": "clearly good"})
    assert response.status_code == 302
    gold = GoldItem.objects.get()
    assert (gold.completion_id, gold.answer, gold.note) == (item.pk, {"score": 4, "tolerance": 1}, "clearly good")
    event = AuditEvent.objects.get(action="gold_set")
    assert event.detail["before"] is None and event.detail["after"] == {"score": 4, "tolerance": 1}
    page = staff_client.get(_url(project)).content.decode()
    assert f'data-gold="{item.pk}"' in page and "4 (± 1)" in page and "a plainly great answer" in page


def test_editing_an_answer_through_the_page_rescores_and_says_so_in_the_audit_log(
    project, make_completion, make_user, staff_client, staff_user
):
    project.gold_rate = 1.0
    project.save()
    item = make_completion(project)
    services.gold_item_set(completion=item, answer={"score": 2}, actor=staff_user)
    person = make_user("rater")
    lease = services.lease_next(project=project, annotator=person)
    services.rating_create(annotator=person, completion=lease.completion, score=5)

    form = staff_client.get(_url(project), {"gold": item.pk}).content.decode()
    assert f"Change the answer of gold item #{item.pk}" in form and 'value="likert"' in form
    assert '<option value="2" selected>' in form  # prefilled with today's answer

    response = staff_client.post(_url(project, "gold/"), {"kind": "likert", "completion": item.pk, "score": "5", "tolerance": "0"})
    assert response.status_code == 302
    assert GoldItem.objects.get().answer == {"score": 5, "tolerance": 0}
    event = AuditEvent.objects.filter(action="gold_set").first()  # newest first
    assert event.actor == staff_user and event.detail["verdicts_changed"] == 1 and event.detail["judgments"] == 1
    page = staff_client.get(_url(project)).content.decode()
    assert "1 / 1" in page  # the rating of 5 is now right, on the gold table and the annotators' table


@pytest.mark.parametrize(
    "data, error",
    [
        ({"kind": "likert", "score": ""}, "A Likert gold answer is"),  # no score given
        ({"kind": "thumbs", "thumbs": "up"}, "A Likert gold answer is"),  # wrong kind for a Likert item
        ({"kind": "likert", "score": "9"}, "Select a valid choice"),
    ],
)
def test_a_bad_answer_is_refused_with_the_reason_and_nothing_is_stored(project, make_completion, staff_client, data, error):
    item = make_completion(project)
    response = staff_client.post(_url(project, "gold/"), {"completion": item.pk, **data})
    assert response.status_code == 400 and error in response.content.decode()
    assert not GoldItem.objects.exists() and not AuditEvent.objects.filter(action="gold_set").exists()


def test_an_item_of_another_project_or_a_held_out_prompt_is_refused(project, project_factory, tiny_model_dir, make_completion, staff_client):
    other = project_factory("other", tiny_model_dir)
    foreign = make_completion(other)
    response = staff_client.post(_url(project, "gold/"), {"kind": "likert", "completion": foreign.pk, "score": "3"})
    assert response.status_code == 400 and f"This project has no item #{foreign.pk}" in response.content.decode()
    held = make_completion(project, prompt=project.prompts.get(held_out=True))
    response = staff_client.post(_url(project, "gold/"), {"kind": "likert", "completion": held.pk, "score": "3"})
    assert response.status_code == 400 and "held-out prompt" in response.content.decode()
    assert not GoldItem.objects.exists()


def test_a_pairwise_project_asks_for_a_choice_on_the_pairs_completion_a(tiny_model_dir, models_dir, make_completion, make_user, client):
    project = make_project(tiny_model_dir, slug="gpw", mode="pairwise")
    boss = make_user("boss2", staff=True)
    client.force_login(boss)
    assert 'name="choice"' in client.get(_url(project)).content.decode()
    pair = make_pair(project, make_completion)
    assert client.post(_url(project, "gold/"), {"kind": "pairwise", "completion": pair.completion_a_id, "choice": "b"}).status_code == 302
    assert GoldItem.objects.get().answer == {"choice": "b"}
    assert "B is better" in client.get(_url(project)).content.decode()


def test_annotators_cannot_see_or_change_gold_items(project, make_completion, annotator, client):
    item = make_completion(project)
    client.force_login(annotator)
    assert client.get(_url(project)).status_code == 403
    assert client.post(_url(project, "gold/"), {"kind": "likert", "completion": item.pk, "score": "3"}).status_code == 403
    assert not GoldItem.objects.exists()
