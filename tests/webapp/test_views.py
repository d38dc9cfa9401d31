import pytest
from django.urls import reverse

from webapp.annotation.models import Lease, Rating

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def annotator_client(client, annotator):
    client.force_login(annotator)
    return client


def annotate_url(project):
    return reverse("annotation:annotate", args=[project.slug])


def next_url(project):
    return reverse("annotation:next", args=[project.slug])


def test_annotation_page_needs_a_login(client, project):
    response = client.get(annotate_url(project))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_annotation_page_shows_the_leased_prompt_and_completion(annotator_client, project, make_completion):
    make_completion(project, text="The acting was superb")
    response = annotator_client.post(next_url(project), follow=True)
    body = response.content.decode()
    assert response.status_code == 200
    assert "The acting was superb" in body and "film number 0 was" in body
    assert 'data-key="5"' in body and 'data-key="s"' in body


def test_rating_by_htmx_stores_it_and_swaps_in_the_next_item(annotator_client, annotator, project, make_completion):
    first = make_completion(project, text="first completion")
    make_completion(project, text="second completion")
    annotator_client.post(next_url(project), follow=True)
    response = annotator_client.post(reverse("annotation:rate", args=[project.slug, first.pk]), {"score": "4"}, **HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body and 'id="card"' in body and "second completion" in body
    rating = Rating.objects.get()
    assert (rating.completion_id, rating.annotator_id, rating.score) == (first.pk, annotator.pk, 4)
    assert rating.seconds_spent is not None and rating.seconds_spent >= 0


def test_double_click_stores_one_rating_and_says_so(annotator_client, project, make_completion):
    first = make_completion(project)
    annotator_client.post(next_url(project), follow=True)
    url = reverse("annotation:rate", args=[project.slug, first.pk])
    annotator_client.post(url, {"score": "4"}, **HTMX)
    response = annotator_client.post(url, {"score": "2"}, **HTMX)
    assert "rated this item already" in response.content.decode()
    assert Rating.objects.count() == 1


def test_rating_needs_post(annotator_client, project, make_completion):
    completion = make_completion(project)
    assert annotator_client.get(reverse("annotation:rate", args=[project.slug, completion.pk])).status_code == 405


def test_empty_queue_shows_the_waiting_state_that_polls(annotator_client, project):
    body = annotator_client.post(next_url(project), **HTMX).content.decode()
    assert "The model is writing new outputs" in body
    assert 'hx-trigger="every 3s"' in body and f'hx-post="{next_url(project)}"' in body


WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def writes_during(request):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = request()
    return response, [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(WRITES)]


def test_loading_the_annotation_page_or_its_card_writes_nothing_to_the_database(
    annotator_client, project, make_completion
):
    make_completion(project, text="waiting to be leased")
    card_url = reverse("annotation:card", args=[project.slug])
    for request in (
        lambda: annotator_client.get(annotate_url(project)),
        lambda: annotator_client.get(card_url, **HTMX),
        lambda: annotator_client.get(card_url, HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HTMX),
    ):
        response, writes = writes_during(request)
        assert response.status_code == 200 and writes == []
    assert not Lease.objects.exists()


def test_the_page_asks_for_its_item_by_post_as_it_loads_and_then_shows_the_held_item(
    annotator_client, project, make_completion
):
    make_completion(project, text="the leased completion")
    body = annotator_client.get(annotate_url(project)).content.decode()
    assert f'hx-post="{next_url(project)}" hx-trigger="load"' in body and "the leased completion" not in body
    card = annotator_client.post(next_url(project), **HTMX).content.decode()
    assert "the leased completion" in card and "<html" not in card and Lease.objects.count() == 1
    response, writes = writes_during(lambda: annotator_client.get(annotate_url(project)))
    assert "the leased completion" in response.content.decode() and writes == []  # a reload shows it, reading only


def test_without_htmx_the_next_item_button_leases_and_returns_to_the_page(annotator_client, project, make_completion):
    make_completion(project, text="plain form post")
    response = annotator_client.post(next_url(project))
    assert response.status_code == 302 and response["Location"] == annotate_url(project)
    assert "plain form post" in annotator_client.get(annotate_url(project)).content.decode()


def test_the_next_item_needs_post(annotator_client, project):
    assert annotator_client.get(next_url(project)).status_code == 405


def test_history_restore_request_gets_the_full_page(annotator_client, project, make_completion):
    make_completion(project)
    card_url = reverse("annotation:card", args=[project.slug])
    assert "<html" not in annotator_client.get(card_url, **HTMX).content.decode()
    restored = annotator_client.get(card_url, HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HTMX)
    assert "<html" in restored.content.decode()


def test_model_and_prompt_text_is_escaped(annotator_client, project, make_completion):
    prompt = project.prompts.first()
    prompt.text = "<script>alert('p')</script>"
    prompt.save()
    make_completion(project, prompt=prompt, text="<img src=x onerror=alert(1)>")
    body = annotator_client.post(next_url(project), follow=True).content.decode()
    assert "<script>alert" not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(&#x27;p&#x27;)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


def test_pages_send_a_content_security_policy_without_inline_script(annotator_client, project):
    response = annotator_client.get(annotate_url(project))
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_the_favicon_is_ours_linked_from_every_page_and_at_favicon_ico(client, annotator_client, project):
    from django.contrib.staticfiles import finders
    from django.templatetags.static import static

    icon = static("rewardloop/favicon.svg")
    assert f'<link rel="icon" type="image/svg+xml" href="{icon}">' in annotator_client.get(annotate_url(project)).content.decode()
    response = client.get("/favicon.ico")  # browsers ask for it without a link; no login needed
    assert response.status_code == 301 and response["Location"] == icon
    assert open(finders.find("rewardloop/favicon.svg")).read().startswith("<svg ")


@pytest.mark.parametrize(
    "name,args,method",
    [
        ("training:runs", [], "get"),
        ("training:train_now", [], "post"),
        ("policies:versions", [], "get"),
        ("policies:promote", [0], "post"),
    ],
)
def test_annotators_get_403_on_staff_pages_and_actions(annotator_client, project, name, args, method):
    url = reverse(name, args=[project.slug, *args])
    assert getattr(annotator_client, method)(url).status_code == 403


def test_staff_see_runs_and_versions(client, staff_user, project):
    client.force_login(staff_user)
    runs = client.get(reverse("training:runs", args=[project.slug])).content.decode()
    assert "Training runs" in runs and "No training runs yet" in runs
    versions = client.get(reverse("policies:versions", args=[project.slug])).content.decode()
    assert "v0" in versions and "served" in versions


def test_train_now_without_ratings_explains_why_nothing_started(client, staff_user, project):
    client.force_login(staff_user)
    response = client.post(reverse("training:train_now", args=[project.slug]), follow=True)
    assert "no new ratings to train on" in response.content.decode()


def test_healthz_reports_database_broker_and_pools(client, project, make_completion):
    make_completion(project)
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200
    assert body["database"] is True and body["broker"] is True
    assert body["projects"] == {"t": {"served_version": 0, "pool_size": 1}}


def test_expired_csrf_token_gives_a_clear_reload_message(project, annotator, make_completion):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(annotator)
    completion = make_completion(project)
    response = strict.post(reverse("annotation:rate", args=[project.slug, completion.pk]), {"score": "3"}, **HTMX)
    assert response.status_code == 403
    assert "Reload the page" in response.content.decode()
    assert not Rating.objects.exists()


def test_an_htmx_request_from_an_expired_session_redirects_the_whole_page_to_login(client, project):
    response = client.post(
        reverse("annotation:card", args=[project.slug]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL=f"http://testserver/p/{project.slug}/annotate/",
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/accounts/login/?next=/p/{project.slug}/annotate/"


def test_the_login_page_sends_a_signed_in_person_on(annotator_client):
    assert annotator_client.get("/accounts/login/").status_code == 302


def test_healthz_answers_head_requests(client, db):
    assert client.head("/healthz").status_code == 200


def test_comparing_needs_two_real_versions(client, staff_user, project):
    client.force_login(staff_user)
    response = client.post(
        reverse("training:compare_start", args=[project.slug]), {"a": "99999999999999999999", "b": "0"}, follow=True
    )
    assert response.status_code == 200
    assert "Choose two versions of this project" in response.content.decode()
