"""Production feedback: answers stored under their id, feedback only from the token that received them,
ratings with source production that training uses (weighted per project), export by source."""

from __future__ import annotations

import json
import threading
import time

import httpx2
import pytest

from tests.webapp.api_helpers import ApiClient
from tests.webapp.serving_helpers import gunicorn  # noqa: F401 - fixture
from webapp.accounts.services import api_token_create
from webapp.annotation.models import Comparison, Completion, Feedback, Rating
from webapp.annotation.production import AnswerChoice, production_answer_store
from webapp.annotation.selectors import open_completions
from webapp.annotation.services import completions_retire_unserved
from webapp.policies.models import Membership
from webapp.training import pipeline
from webapp.training import services as training_services
from webapp.training.exports import ratings_jsonl


def answer(project, token, response_id, *, prompt="What is a good film?", n=1, tokens=(11, 12, 13)):
    return production_answer_store(
        project=project, version_number=project.served_version.number, api_token=token, response_id=response_id,
        prompt_text=prompt, prompt_token_ids=[5, 6, 7],
        choices=[AnswerChoice(index=i, text=f"answer {i}", token_ids=list(tokens), logprobs=[-1.0] * len(tokens),
                              finished=True) for i in range(n)],
    )


@pytest.fixture
def user_token(annotator):
    token, secret = api_token_create(user=annotator, name="app")
    return token, ApiClient(secret)


def test_an_answer_is_stored_as_production_completions_never_offered_to_annotators(project, user_token):
    token, _ = user_token
    completions = answer(project, token, "chatcmpl-0a", n=2)
    assert [(c.source, c.response_id, c.choice_index, c.api_token_id) for c in completions] == [
        ("production", "chatcmpl-0a", 0, token.pk), ("production", "chatcmpl-0a", 1, token.pk)]
    assert completions[0].prompt.from_production and completions[0].prompt_id == completions[1].prompt_id
    assert not open_completions(project=project).filter(source="production").exists()
    completions_retire_unserved(project=project)  # serving the version again revives retired pool items, not these
    assert not open_completions(project=project).filter(source="production").exists()


def test_thumbs_likert_comment_and_preference_become_production_ratings(project, user_token, annotator):
    token, api = user_token
    answer(project, token, "chatcmpl-1a")
    answer(project, token, "chatcmpl-2b", n=2)
    response = api.post("/feedback", {"id": "chatcmpl-1a", "thumbs": "up", "comment": "spot on"})
    assert response.status_code == 201, response.content
    rating = Rating.objects.get(pk=response.json()["rating_id"])
    assert (rating.source, rating.thumbs_up, rating.annotator, rating.comment) == ("production", True, annotator,
                                                                                   "spot on")
    comment = api.post("/feedback", {"id": "chatcmpl-1a", "comment": "and quick"})
    assert comment.status_code == 201 and comment.json()["kind"] == "comment" and comment.json()["rating_id"] is None
    pref = api.post("/feedback", {"id": "chatcmpl-2b", "choice": 1, "better_than": "chatcmpl-2b",
                                  "better_than_choice": 0})
    assert pref.status_code == 201, pref.content
    comparison = Comparison.objects.get()
    winner = Completion.objects.get(response_id="chatcmpl-2b", choice_index=1)
    assert Rating.objects.get(pk=pref.json()["rating_id"]).completion == winner
    assert comparison.ratings.filter(source="production").count() == 2
    # Different prompts cannot be compared: refused, nothing stored.
    answer(project, token, "chatcmpl-3c", prompt="Another question")
    before = (Rating.objects.count(), Feedback.objects.count())
    assert api.post("/feedback", {"id": "chatcmpl-3c", "better_than": "chatcmpl-1a"}).status_code == 409
    assert (Rating.objects.count(), Feedback.objects.count()) == before
    assert Feedback.objects.count() == 3


def test_only_the_token_that_received_an_answer_may_rate_it(project, user_token, annotator, make_user):
    token, api = user_token
    answer(project, token, "chatcmpl-4d")
    _, same_user_other_token = api_token_create(user=annotator, name="other")
    _, someone_else = api_token_create(user=make_user("someone"), name="theirs")
    for secret in (same_user_other_token, someone_else):
        response = ApiClient(secret).post("/feedback", {"id": "chatcmpl-4d", "thumbs": "down"})
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert api.post("/feedback", {"id": "chatcmpl-ffff", "thumbs": "down"}).status_code == 404  # unknown id
    assert api.post("/feedback", {"id": "chatcmpl-4d", "choice": 3, "thumbs": "down"}).status_code == 404
    Membership.objects.filter(user=annotator).delete()  # left the project: its answers are no longer theirs
    assert api.post("/feedback", {"id": "chatcmpl-4d", "thumbs": "down"}).status_code == 404
    assert not Rating.objects.exists() and not Feedback.objects.exists()


@pytest.mark.parametrize("body, field", [
    ({"id": "chatcmpl-5e"}, None),  # no judgment, no comment
    ({"id": "chatcmpl-5e", "thumbs": "up", "score": 3}, None),  # two judgments
    ({"id": "chatcmpl-5e", "score": 6}, "score"),
    ({"id": "chatcmpl-5e", "score": True}, "score"),  # JSON true is not the score 1
    ({"id": "chatcmpl-5e", "thumbs": "sideways"}, "thumbs"),
    ({"id": "not an id", "thumbs": "up"}, "id"),
    ({"id": "chatcmpl-5e", "comment": "x" * 2001}, "comment"),
])
def test_malformed_feedback_is_a_400_naming_the_field(project, user_token, body, field):
    token, api = user_token
    answer(project, token, "chatcmpl-5e")
    response = api.post("/feedback", body)
    assert response.status_code == 400, response.content
    if field:
        assert field in [f["field"] for f in response.json()["fields"]]
    assert not Feedback.objects.exists()


def test_production_feedback_reaches_a_training_runs_batch_with_the_projects_weight(project, user_token,
                                                                                    make_completion, make_user):
    token, api = user_token
    project.production_feedback_weight = 0.5
    project.save()
    produced = answer(project, token, "chatcmpl-6f")[0]
    assert api.post("/feedback", {"id": "chatcmpl-6f", "thumbs": "down"}).status_code == 201
    pooled = make_completion(project)
    Rating.objects.create(completion=pooled, annotator=make_user("rater"), score=5)
    run = training_services.training_run_create(project=project, trigger="manual")
    assert training_services.training_step_run(run_id=run.pk, step="batch", chain=False) == "update"
    batch = pipeline.batch_read(run=run)
    assert set(run.ratings.values_list("source", flat=True)) == {"annotator", "production"}
    rows = dict(zip(map(tuple, batch.completion_ids), batch.weights))
    assert rows == {tuple(produced.token_ids): 0.5, tuple(pooled.token_ids): 1.0}


def test_ratings_export_filters_by_source(project, user_token, make_completion, make_user):
    token, api = user_token
    answer(project, token, "chatcmpl-7a")
    api.post("/feedback", {"id": "chatcmpl-7a", "thumbs": "up"})
    Rating.objects.create(completion=make_completion(project, text="pool text"), annotator=make_user("r"), score=5)
    assert [json.loads(line)["completion"] for line in ratings_jsonl(project=project, fmt="kto")[0].splitlines()] == [
        "answer 0", "pool text"]
    assert ratings_jsonl(project=project, fmt="kto", source="production")[1] == 1
    assert json.loads(ratings_jsonl(project=project, fmt="kto", source="annotator")[0])["completion"] == "pool text"


def test_staff_pages_filter_ratings_by_source_and_show_the_weight(project, user_token, make_completion, make_user,
                                                                  staff_client, annotator):
    token, api = user_token
    answer(project, token, "chatcmpl-7b")
    api.post("/feedback", {"id": "chatcmpl-7b", "thumbs": "up", "comment": "from the app"})
    Rating.objects.create(completion=make_completion(project, text="pool text"), annotator=make_user("rater"), score=5,
                          comment="from the queue")
    project.production_feedback_weight = 0.3
    project.save()
    figures = f"/p/{project.slug}/figures/"

    def table(source):
        page = staff_client.get(figures, {"source": source} if source else {}).content.decode()
        annotators = page.split('id="annotators"')[1].split("</table>")[0]
        comments = page.split('id="comments"')[1].split("</table>")[0]
        return page, annotators, comments

    page, annotators, comments = table(None)
    assert "rater" in annotators and annotator.username in annotators
    assert "from the app" in comments and "from the queue" in comments
    assert "counts 0.30 in training" in page
    _, annotators, comments = table("production")
    assert "rater" not in annotators and annotator.username in annotators
    assert "from the app" in comments and "from the queue" not in comments
    _, annotators, comments = table("annotator")
    assert "rater" in annotators and annotator.username not in annotators and "from the app" not in comments
    # The export on the versions page takes the same filter.
    url = f"/staff/p/{project.slug}/export/ratings/"
    assert 'name="source"' in staff_client.get(f"/staff/p/{project.slug}/versions/").content.decode()
    only = staff_client.post(url, {"format": "kto", "source": "production"})
    assert only.status_code == 200 and "production" in only["Content-Disposition"]
    assert [json.loads(line)["completion"] for line in only.content.decode().splitlines()] == ["answer 0"]
    both = staff_client.post(url, {"format": "kto", "source": ""}).content.decode().splitlines()
    assert len(both) == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_feedback_posts_lose_nothing(project, annotator, gunicorn, settings):
    """50 posts at one instant to the web app as the Procfile runs it (gunicorn: Django's test server's
    listen backlog of 10 would reset connections before the app sees them)."""
    settings.REWARDLOOP_API_RATE = "100000/m"
    server = gunicorn()
    token, secret = api_token_create(user=annotator, name="load")
    for i in range(50):
        answer(project, token, f"chatcmpl-{i:04x}", prompt=f"question {i}")
    statuses, barrier = [], threading.Barrier(50)

    def post(i):
        barrier.wait()
        response = httpx2.post(f"{server.url}/api/v1/feedback", json={"id": f"chatcmpl-{i:04x}", "score": 1 + i % 5},
                               headers={"Authorization": f"Bearer {secret}"}, timeout=120)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert sorted(statuses) == [201] * 50
    assert Feedback.objects.count() == 50
    assert sorted(Rating.objects.filter(source="production").values_list("score", flat=True)) == sorted(
        1 + i % 5 for i in range(50))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_fifty_feedback_posts_during_a_running_training_run_lose_nothing(project, annotator, gunicorn, settings,
                                                                         make_completion, make_user):
    """A run snapshots its ratings in its batch step; feedback posted while its update, save and
    later steps run is all stored, stays out of that run, and reaches the next run's batch."""
    settings.REWARDLOOP_API_RATE = "100000/m"
    server = gunicorn()
    token, secret = api_token_create(user=annotator, name="load")
    for i in range(50):
        answer(project, token, f"chatcmpl-{i:04x}", prompt=f"question {i}")
    Rating.objects.create(completion=make_completion(project), annotator=make_user("rater"), score=5)
    run = training_services.training_run_create(project=project, trigger="manual")
    step = training_services.training_step_run(run_id=run.pk, step="batch", chain=False)
    assert step == "update"
    run.refresh_from_db()
    assert run.status == "running"  # the posts below start while it is in progress
    steps_run, statuses, answered, trained, barrier = [], [], [], [], threading.Barrier(51)

    def train():
        from django.db import connection

        barrier.wait()
        next_step = step
        try:
            while next_step:
                steps_run.append(next_step)
                next_step = training_services.training_step_run(run_id=run.pk, step=next_step, chain=False)
        finally:
            trained.append(time.monotonic())
            connection.close()  # this thread's own connection, so the test database can be dropped

    def post(i):
        barrier.wait()
        response = httpx2.post(f"{server.url}/api/v1/feedback", json={"id": f"chatcmpl-{i:04x}", "score": 1 + i % 5},
                               headers={"Authorization": f"Bearer {secret}"}, timeout=120)
        answered.append(time.monotonic())
        statuses.append(response.status_code)

    threads = [threading.Thread(target=train)] + [threading.Thread(target=post, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    run.refresh_from_db()
    assert run.status == "succeeded", (run.status, steps_run)
    assert steps_run[0] == "update" and len(steps_run) >= 3, steps_run
    # Sent while the run was running (above) and answered while its later steps were still going:
    # here at load 10 all 50 were answered before its end, the first 3 s before it.
    assert min(answered) < trained[0], "the posts did not overlap the run"
    assert sorted(statuses) == [201] * 50
    assert Feedback.objects.count() == 50
    assert sorted(Rating.objects.filter(source="production").values_list("score", flat=True)) == sorted(
        1 + i % 5 for i in range(50))
    assert set(run.ratings.values_list("source", flat=True)) == {"annotator"}  # its batch came before them
    following = training_services.training_run_create(project=project, trigger="manual")
    assert training_services.training_step_run(run_id=following.pk, step="batch", chain=False) == "update"
    assert following.ratings.filter(source="production").count() == 50


@pytest.mark.django_db
def test_reward_model_fits_read_production_ratings_beside_annotators(project, user_token, make_completion, make_user):
    """The reward model is fitted on every rating of the project's training prompts, production ones
    included (weighted by ``production_feedback_weight``: test_rewards_services.py)."""
    from webapp.rewards import selectors as reward_selectors
    from webapp.rewards.services import judgments_build

    token, api = user_token
    produced = answer(project, token, "chatcmpl-5e")[0]
    assert api.post("/feedback", {"id": "chatcmpl-5e", "score": 2}).status_code == 201
    pooled = make_completion(project)
    Rating.objects.create(completion=pooled, annotator=make_user("rater"), score=5)
    rows = reward_selectors.rating_rows(project=project)
    assert {r.completion_id for r in rows} == {produced.pk, pooled.pk}
    data = judgments_build(project=project, rows=rows)
    assert data["completion_ids"] == sorted([produced.pk, pooled.pk])
    assert reward_selectors.judgment_count(project=project) == 2


def test_a_new_judgment_replaces_the_last_and_delete_withdraws_it(project, user_token, annotator):
    token, api = user_token
    answer(project, token, "chatcmpl-5e", n=2)
    first = api.post("/feedback", {"id": "chatcmpl-5e", "thumbs": "down"}).json()
    note = api.post("/feedback", {"id": "chatcmpl-5e", "comment": "too long"}).json()  # a comment replaces nothing
    assert note["replaced"] == []
    changed = api.post("/feedback", {"id": "chatcmpl-5e", "score": 4})
    assert changed.status_code == 201, changed.content
    assert changed.json()["replaced"] == [first["id"]]
    def live():
        return Rating.objects.filter(annotator=annotator, source="production")

    assert [(r.score, r.thumbs_up) for r in live()] == [(4, None)]  # the newest word only
    old = Feedback.objects.get(pk=first["id"])
    assert old.withdrawn_at is not None and old.rating is None and old.thumbs_up is False  # the record stays
    # A preference touching choice 0 replaces its score; a thumb on choice 1 then replaces the preference (both sides).
    pref = api.post("/feedback", {"id": "chatcmpl-5e", "choice": 1, "better_than": "chatcmpl-5e"}).json()
    assert pref["replaced"] == [changed.json()["id"]] and live().count() == 2 and Comparison.objects.count() == 1
    thumb = api.post("/feedback", {"id": "chatcmpl-5e", "choice": 1, "thumbs": "up"}).json()
    assert thumb["replaced"] == [pref["id"]] and Comparison.objects.count() == 0
    assert [(r.completion.choice_index, r.thumbs_up) for r in live()] == [(1, True)]
    # DELETE withdraws: the rating goes, the record stays; twice is a 409; another token's is a 404.
    gone = api.delete(f"/feedback/{thumb['id']}")
    assert gone.status_code == 200, gone.content
    assert gone.json()["withdrawn_at"] is not None and gone.json()["rating_id"] is None
    assert not live().exists() and Feedback.objects.get(pk=thumb["id"]).thumbs_up is True
    again = api.delete(f"/feedback/{thumb['id']}")
    assert again.status_code == 409 and again.json()["code"] == "rejected"
    _, other_secret = api_token_create(user=annotator, name="other app")
    assert ApiClient(other_secret).delete(f"/feedback/{note['id']}").status_code == 404
    assert api.delete("/feedback/999999").status_code == 404
    assert api.delete(f"/feedback/{note['id']}").status_code == 200  # a comment can be withdrawn too


def test_feedback_a_training_run_used_can_no_longer_change(project, user_token):
    token, api = user_token
    answer(project, token, "chatcmpl-6a")
    sent = api.post("/feedback", {"id": "chatcmpl-6a", "thumbs": "up"}).json()
    run = training_services.training_run_create(project=project, trigger="manual")
    run.ratings.add(sent["rating_id"])
    refused = api.post("/feedback", {"id": "chatcmpl-6a", "thumbs": "down"})
    assert refused.status_code == 409 and "training run" in refused.json()["message"]
    assert api.delete(f"/feedback/{sent['id']}").status_code == 409
    assert Rating.objects.get(pk=sent["rating_id"]).thumbs_up is True  # nothing changed
    assert Feedback.objects.get(pk=sent["id"]).withdrawn_at is None
