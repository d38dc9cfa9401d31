"""The annotation queue and prompt import through the REST API: the page's services, the page's rules."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.webapp.annotation_helpers import make_pair, make_project
from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.annotation.models import Comparison, Completion, Lease, Rating, RatingRevision, Skip

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def thumbs_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="thumbs", mode="thumbs")


@pytest.fixture
def pairwise_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="pairs", mode="pairwise")


def test_next_leases_an_item_with_its_prompt_and_lease_and_asking_again_keeps_it(
    project, annotator, make_completion, api_for
):
    completion = make_completion(project, text="the model wrote this")
    client = api_for(annotator)
    first = client.post("/projects/t/queue/next")
    assert first.status_code == 200
    item = first.json()["item"]
    assert item["completion_id"] == completion.pk and item["mode"] == "likert" and item["pair"] is None
    assert item["completion"] == {"id": completion.pk, "text": "the model wrote this", "finished": True}
    assert item["prompt"] == completion.prompt.text
    assert "version" not in item  # blind, as the card: the version shows in the history after rating
    assert Lease.objects.get(annotator=annotator).completion_id == completion.pk
    assert client.post("/projects/t/queue/next").json()["item"]["completion_id"] == completion.pk
    assert Lease.objects.count() == 1


def test_next_with_nothing_to_rate_answers_a_null_item(project, annotator, api_for):
    body = api_for(annotator).post("/projects/t/queue/next").json()
    assert body["item"] is None and body["progress"]["queue"] == 0


def test_an_api_rating_is_the_same_row_as_a_page_rating(project, make_user, make_completion, api_for, client):
    by_page, by_api = make_completion(project, text="one"), make_completion(project, text="two")
    page_user, api_user = make_user("page"), make_user("api")
    client.force_login(page_user)
    client.post(reverse("annotation:next", args=["t"]), **HTMX)
    client.post(reverse("annotation:rate", args=["t", by_page.pk]), {"score": "4", "comment": "fine"})  # no next lease
    api = api_for(api_user)
    leased = api.post("/projects/t/queue/next").json()["item"]["completion_id"]
    assert leased == by_api.pk
    response = api.post(f"/projects/t/queue/{by_api.pk}/rate", {"score": 4, "comment": "fine"})
    assert response.status_code == 201
    fields = ["score", "thumbs_up", "comparison_id", "comment"]
    page_row = Rating.objects.values(*fields).get(annotator=page_user)
    api_row = Rating.objects.values(*fields).get(annotator=api_user)
    assert page_row == api_row == {"score": 4, "thumbs_up": None, "comparison_id": None, "comment": "fine"}
    assert Lease.objects.get(annotator=api_user).fulfilled and Lease.objects.get(annotator=page_user).fulfilled
    assert Completion.objects.get(pk=by_api.pk).n_ratings == Completion.objects.get(pk=by_page.pk).n_ratings == 1
    assert response.json()["id"] == Rating.objects.get(annotator=api_user).pk
    assert Rating.objects.get(annotator=api_user).seconds_spent is not None  # since the lease, as on the page


def test_the_api_refuses_what_the_page_refuses_a_second_rating_and_a_held_out_prompt(
    project, annotator, make_completion, api_for
):
    client = api_for(annotator)
    completion = make_completion(project)
    assert client.post(f"/projects/t/queue/{completion.pk}/rate", {"score": 2}).status_code == 201
    again = client.post(f"/projects/t/queue/{completion.pk}/rate", {"score": 5})
    assert again.status_code == 409 and again.json()["code"] == "rejected"
    held_out = make_completion(project, prompt=project.prompts.get(held_out=True))
    refused = client.post(f"/projects/t/queue/{held_out.pk}/rate", {"score": 5})
    assert refused.status_code == 409 and "held out" in refused.json()["message"]
    assert Rating.objects.count() == 1 and Rating.objects.get().score == 2


@pytest.mark.parametrize(
    "body, field",
    [
        ({"score": "five"}, "score"),
        ({"score": 7}, "score"),
        ({"score": True}, "score"),  # JSON true is not the score 1
        ({"score": 3, "mood": "happy"}, "mood"),
        ({"score": 3, "comment": "x" * 2001}, "comment"),
        ({"score": 3, "comment": "nul\x00inside"}, "comment"),
        ({"score": 3, "seconds_spent": -1}, "seconds_spent"),
    ],
)
def test_a_malformed_rating_is_a_400_naming_the_field_and_stores_nothing(
    project, annotator, make_completion, api_for, body, field
):
    completion = make_completion(project)
    response = api_for(annotator).post(f"/projects/t/queue/{completion.pk}/rate", body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "invalid" and [f["field"] for f in error["fields"]] == [field]
    assert field in error["message"]
    assert not Rating.objects.exists() and not Lease.objects.exists()


def test_a_body_that_is_not_json_is_a_400(project, annotator, make_completion, api_for):
    completion = make_completion(project)
    response = api_for(annotator).post(f"/projects/t/queue/{completion.pk}/rate", raw="{score: 3")
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert not Rating.objects.exists()


def test_a_rating_that_does_not_fit_the_mode_is_a_400_naming_the_fields_and_stores_nothing(
    project, annotator, make_completion, api_for
):
    completion = make_completion(project)
    response = api_for(annotator).post(f"/projects/t/queue/{completion.pk}/rate", {"thumbs_up": True})
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert [f["field"] for f in response.json()["fields"]] == ["score", "thumbs_up"]
    assert not Rating.objects.exists() and not Lease.objects.exists()


def test_an_item_of_another_project_is_a_404(project, thumbs_project, annotator, make_completion, api_for):
    elsewhere = make_completion(thumbs_project)
    response = api_for(annotator).post(f"/projects/t/queue/{elsewhere.pk}/rate", {"score": 3})
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_a_thumbs_project_takes_thumbs_up_through_the_api(thumbs_project, annotator, make_completion, api_for):
    completion = make_completion(thumbs_project)
    response = api_for(annotator).post(f"/projects/thumbs/queue/{completion.pk}/rate", {"thumbs_up": False})
    assert response.status_code == 201 and response.json()["thumbs_up"] is False
    assert Rating.objects.get().thumbs_up is False


def test_a_pair_is_leased_with_both_sides_and_compared_through_the_api(
    pairwise_project, annotator, make_completion, api_for
):
    pair = make_pair(pairwise_project, make_completion)
    client = api_for(annotator)
    item = client.post("/projects/pairs/queue/next").json()["item"]
    assert item["completion_id"] == pair.completion_a_id and item["mode"] == "pairwise"
    assert item["pair"]["a"]["id"] == pair.completion_a_id and item["pair"]["b"]["id"] == pair.completion_b_id
    lease = Lease.objects.get(annotator=annotator)
    assert item["pair"]["a_on_left"] == lease.a_on_left
    bad = client.post(f"/projects/pairs/queue/{pair.completion_a_id}/compare", {"choice": "left"})
    assert bad.status_code == 400 and bad.json()["fields"][0]["field"] == "choice"
    not_a_pair = client.post(f"/projects/pairs/queue/{pair.completion_b_id}/compare", {"choice": "a"})
    assert not_a_pair.status_code == 404
    assert client.post(f"/projects/pairs/queue/{pair.completion_a_id}/rate", {"score": 3}).status_code == 409
    response = client.post(f"/projects/pairs/queue/{pair.completion_a_id}/compare", {"choice": "b"})
    assert response.status_code == 201
    comparison = Comparison.objects.get()
    assert comparison.choice == "b" and comparison.a_on_left == lease.a_on_left
    assert Rating.objects.filter(comparison=comparison).count() == 2


def test_skip_gives_the_item_back_and_it_is_not_offered_again(project, annotator, make_completion, api_for):
    completion = make_completion(project)
    client = api_for(annotator)
    client.post("/projects/t/queue/next")
    response = client.post(f"/projects/t/queue/{completion.pk}/skip")
    assert response.status_code == 204
    assert Skip.objects.filter(annotator=annotator, completion=completion).exists()
    assert client.post("/projects/t/queue/next").json()["item"] is None
    late = client.post(f"/projects/t/queue/{completion.pk}/rate", {"score": 3})
    assert late.status_code == 409 and "not in your queue" in late.json()["message"]
    assert "page" not in late.json()["message"] and "retry" in late.json()["message"]  # an API caller has no page


def test_undo_withdraws_the_last_rating_and_leases_its_item_back(project, annotator, make_completion, api_for):
    completion = make_completion(project)
    client = api_for(annotator)
    client.post(f"/projects/t/queue/{completion.pk}/rate", {"score": 5})
    response = client.post("/projects/t/queue/undo")
    assert response.status_code == 200
    body = response.json()
    assert body["undone"]["completion_id"] == completion.pk and body["undone"]["score"] == 5
    assert body["item"]["completion_id"] == completion.pk
    assert not Rating.objects.exists() and RatingRevision.objects.get().score == 5
    nothing = client.post("/projects/t/queue/undo")
    assert nothing.status_code == 409 and nothing.json()["code"] == "rejected"


def _upload(name, content: str):
    return {"file": SimpleUploadedFile(name, content.encode("utf-8"))}


def test_staff_import_a_jsonl_file_and_repeats_are_counted_not_stored(project, staff_user, api_for):
    client = api_for(staff_user)
    lines = [json.dumps({"text": "A brand new prompt"}), json.dumps({"text": "Another one", "held_out": True})]
    response = client.post("/projects/t/prompts/import", files=_upload("new.jsonl", "\n".join(lines)))
    assert response.status_code == 201
    assert response.json() == {"created": 2, "duplicates": 0, "text_fields": {"text": 2}, "unread_fields": []}
    again = client.post("/projects/t/prompts/import", files=_upload("new.jsonl", "\n".join(lines)))
    assert again.json() == {"created": 0, "duplicates": 2, "text_fields": {"text": 2}, "unread_fields": []}
    assert project.prompts.get(text="Another one").held_out


def test_staff_import_a_csv_file(project, staff_user, api_for):
    upload = _upload("p.csv", "text,source\nFrom CSV,x\n")
    response = api_for(staff_user).post("/projects/t/prompts/import", files=upload)
    assert response.status_code == 201 and project.prompts.get(text="From CSV").source == "x"


def test_a_csv_import_answers_which_column_gave_the_prompt_text_and_which_were_not_read(project, staff_user, api_for):
    """As the page's import preview does: ``text``, else ``prompt`` (TEXT_FIELD_RULE)."""
    upload = _upload("p.csv", "prompt,source,notes\nFrom the prompt column,x,ignored\nAnother,y,\n")
    response = api_for(staff_user).post("/projects/t/prompts/import", files=upload)
    assert response.status_code == 201
    assert response.json() == {"created": 2, "duplicates": 0, "text_fields": {"prompt": 2}, "unread_fields": ["notes"]}
    assert project.prompts.filter(text="From the prompt column").exists()


def test_a_bad_line_rejects_the_whole_file_with_each_bad_line_named(project, staff_user, api_for):
    before = project.prompts.count()
    content = '{"text": "fine"}\n{"text": ""}\nnot json\n'
    response = api_for(staff_user).post("/projects/t/prompts/import", files=_upload("bad.jsonl", content))
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "invalid"
    assert [f["message"].split(":")[0] for f in error["fields"]] == ["line 2", "line 3"]
    assert all(f["field"] == "file" for f in error["fields"])
    assert project.prompts.count() == before


def test_an_import_of_an_unknown_format_or_without_a_file_is_a_400(project, staff_user, api_for):
    client = api_for(staff_user)
    unknown = client.post("/projects/t/prompts/import", files=_upload("p.txt", "hello"))
    assert unknown.status_code == 400 and "unknown format" in unknown.json()["message"]
    assert unknown.json()["fields"][0]["field"] == "file"
    missing = client.post("/projects/t/prompts/import", files={})
    assert missing.status_code == 400 and missing.json()["fields"][0]["field"] == "file"


def test_an_upload_over_the_import_cap_is_a_413_before_it_is_read(project, staff_user, api_for, settings):
    settings.REWARDLOOP_IMPORT_MAX_BYTES = 100
    before = project.prompts.count()
    content = "\n".join(json.dumps({"text": f"prompt {i}"}) for i in range(20))
    response = api_for(staff_user).post("/projects/t/prompts/import", files=_upload("big.jsonl", content))
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert project.prompts.count() == before


def test_a_json_body_over_djangos_limit_is_a_413_in_the_error_shape(
    project, annotator, make_completion, api_for, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    completion = make_completion(project)
    response = api_for(annotator).post(f"/projects/t/queue/{completion.pk}/rate", {"score": 3, "comment": "x" * 1500})
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert not Rating.objects.exists()


def test_a_rubric_project_takes_each_criterion_through_the_api(
    db, tiny_model_dir, models_dir, annotator, make_completion, api_for
):
    """The page's rubric rating, through the API: ``criteria`` maps each criterion's name to 1–5."""
    rubric = [{"name": "helpful", "weight": 3, "description": "answers the prompt"}, {"name": "fluent", "weight": 1}]
    project = make_project(tiny_model_dir, slug="rb", mode="rubric", rubric=rubric)
    completion = make_completion(project)
    client = api_for(annotator)
    assert client.post("/projects/rb/queue/next").json()["item"]["completion_id"] == completion.pk
    missing = client.post(f"/projects/rb/queue/{completion.pk}/rate", {"criteria": {"helpful": 5}})
    assert missing.status_code == 409 and "fluent is missing" in missing.json()["message"]
    bad = client.post(f"/projects/rb/queue/{completion.pk}/rate", {"criteria": {"helpful": True, "fluent": 1}})
    assert bad.status_code == 400 and bad.json()["fields"][0]["field"].startswith("criteria")
    response = client.post(f"/projects/rb/queue/{completion.pk}/rate", {"criteria": {"helpful": 5, "fluent": 1}})
    assert response.status_code == 201, response.content
    assert response.json()["criteria"] == [
        {"name": "helpful", "weight": 3.0, "score": 5}, {"name": "fluent", "weight": 1.0, "score": 1}
    ]
    assert Rating.objects.get().criteria == response.json()["criteria"]
