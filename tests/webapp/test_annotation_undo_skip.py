"""Undo after a skip: ``u`` undoes the last action. After a skip it brings the skipped item back
(the skip is taken back); only a second ``u`` reaches the rating before it. Service, page and REST API."""

from django.urls import reverse

from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.annotation import selectors, services
from webapp.annotation.models import Lease, Rating, RatingRevision, Skip

HTMX = {"HTTP_HX_REQUEST": "true"}


def _rate_a_skip_b(project, annotator, make_completion):
    a, b, c = (make_completion(project, text=f"output {n}") for n in "abc")
    assert services.lease_next(project=project, annotator=annotator).completion_id == a.pk
    services.rating_create(annotator=annotator, completion=a, score=3)
    assert services.lease_next(project=project, annotator=annotator).completion_id == b.pk
    services.item_skip(annotator=annotator, completion=b)
    assert services.lease_next(project=project, annotator=annotator).completion_id == c.pk
    return a, b, c


def test_undo_after_a_skip_brings_the_skipped_item_back_and_a_second_undo_the_rating(
    project, annotator, make_completion
):
    a, b, c = _rate_a_skip_b(project, annotator, make_completion)

    first = services.judgment_undo(project=project, annotator=annotator)

    assert first.revision is None and first.skip.completion_id == b.pk
    assert first.lease.completion_id == b.pk and not first.lease.fulfilled
    assert not Skip.objects.exists()
    assert list(Rating.objects.values_list("completion_id", "score")) == [(a.pk, 3)]  # the rating is untouched
    assert not RatingRevision.objects.exists()
    assert not Lease.objects.filter(completion=c).exists()  # the item they were on went back to the queue
    assert selectors.lease_held(project=project, annotator=annotator).completion_id == b.pk

    second = services.judgment_undo(project=project, annotator=annotator)

    assert second.skip is None and second.revision.score == 3 and second.lease.completion_id == a.pk
    assert not Rating.objects.exists()
    assert list(Lease.objects.filter(annotator=annotator, fulfilled=False).values_list("completion_id", flat=True)) == [a.pk]
    # B is neither skipped nor rated by them: their queue offers it again after A.
    services.rating_create(annotator=annotator, completion=a, score=4)
    assert services.lease_next(project=project, annotator=annotator).completion_id == b.pk


def test_a_skip_alone_can_be_undone_and_the_page_offers_undo_after_it(project, annotator, make_completion):
    a, b = make_completion(project), make_completion(project)
    services.lease_next(project=project, annotator=annotator)
    services.item_skip(annotator=annotator, completion=a)
    assert selectors.annotator_progress(project=project, annotator=annotator)["can_undo"]
    result = services.judgment_undo(project=project, annotator=annotator)
    assert result.lease.completion_id == a.pk and not Skip.objects.exists()
    assert not selectors.annotator_progress(project=project, annotator=annotator)["can_undo"]


def test_u_on_the_card_after_a_skip_shows_the_skipped_item_again(client, project, annotator, make_completion):
    a, b, c = (make_completion(project, text=f"output {n}") for n in "abc")
    client.force_login(annotator)
    client.post(reverse("annotation:next", args=[project.slug]), **HTMX)
    client.post(reverse("annotation:rate", args=[project.slug, a.pk]), {"score": "3"}, **HTMX)
    card = client.post(reverse("annotation:skip", args=[project.slug, b.pk]), **HTMX).content.decode()
    assert f'data-completion="{c.pk}"' in card and 'data-key="u"' in card

    card = client.post(reverse("annotation:undo", args=[project.slug]), **HTMX).content.decode()

    assert f'data-completion="{b.pk}"' in card
    assert "Undone: your skip" in card and "you had chosen" not in card
    card = client.post(reverse("annotation:undo", args=[project.slug]), **HTMX).content.decode()
    assert f'data-completion="{a.pk}"' in card and "Undone: you had chosen <strong>3</strong>" in card


def test_the_rest_api_undo_takes_back_a_skip_first_then_the_rating(project, annotator, make_completion, api_for):
    a, b = make_completion(project), make_completion(project)
    client = api_for(annotator)
    assert client.post(f"/projects/t/queue/{a.pk}/rate", {"score": 5}).status_code == 201
    assert client.post(f"/projects/t/queue/{b.pk}/skip").status_code == 204

    body = client.post("/projects/t/queue/undo").json()

    assert body["undone"]["action"] == "skip" and body["undone"]["completion_id"] == b.pk
    assert body["undone"]["score"] is None and body["item"]["completion_id"] == b.pk
    body = client.post("/projects/t/queue/undo").json()
    assert body["undone"] | {"rated_at": None} == {
        "action": "judgment", "completion_id": a.pk, "score": 5, "thumbs_up": None, "choice": "", "order": None,
        "rated_at": None,
    }
    assert body["item"]["completion_id"] == a.pk
    nothing = client.post("/projects/t/queue/undo")
    assert nothing.status_code == 409 and "rating or skip" in nothing.json()["message"]
