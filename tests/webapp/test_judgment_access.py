"""A judgment (rate, compare, skip) is accepted only for an item the annotator holds a
lease on, or that their own queue would offer them now; held-out prompts never."""

import pytest
from django.urls import reverse

from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation import selectors, services
from webapp.annotation.models import Comparison, Lease, Rating, Skip
from webapp.errors import ApplicationError

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def held_out_completion(project, make_completion):
    return make_completion(project, prompt=project.prompts.get(held_out=True), text="held-out output")


def test_rating_a_held_out_prompt_by_id_is_refused_and_stores_nothing(
    client, annotator, project, held_out_completion
):
    client.force_login(annotator)
    url = reverse("annotation:rate", args=[project.slug, held_out_completion.pk])
    body = client.post(url, {"score": "5"}, **HTMX).content.decode()
    assert "held out" in body
    with pytest.raises(ApplicationError, match="held out"):
        services.rating_create(annotator=annotator, completion=held_out_completion, score=5)
    assert not Rating.objects.exists() and not Lease.objects.exists()


def test_a_lease_on_a_held_out_prompt_does_not_make_it_rateable(annotator, project, held_out_completion):
    Lease.objects.create(completion=held_out_completion, annotator=annotator, slot=0, expires_at="2999-01-01T00:00Z", rating_mode="likert")
    with pytest.raises(ApplicationError, match="held out"):
        services.rating_create(annotator=annotator, completion=held_out_completion, score=5)
    assert not Rating.objects.exists()


def test_skipping_a_held_out_prompt_or_an_item_already_rated_is_refused(
    client, annotator, project, held_out_completion, make_completion
):
    client.force_login(annotator)
    body = client.post(reverse("annotation:skip", args=[project.slug, held_out_completion.pk]), **HTMX).content.decode()
    assert "held out" in body
    rated = make_completion(project)
    services.rating_create(annotator=annotator, completion=rated, score=3)
    with pytest.raises(ApplicationError, match="not in your queue"):
        services.item_skip(annotator=annotator, completion=rated)
    assert not Skip.objects.exists()


def test_an_item_rated_by_others_to_its_quota_cannot_be_rated_by_id(project, make_user, make_completion):
    done = make_completion(project)
    services.rating_create(annotator=make_user("first"), completion=done, score=2)  # ratings_per_item is 1
    with pytest.raises(ApplicationError, match="not in your queue"):
        services.rating_create(annotator=make_user("late"), completion=done, score=5)
    assert Rating.objects.count() == 1


def test_an_item_the_annotator_skipped_cannot_then_be_rated_by_id(project, annotator, make_completion):
    item = make_completion(project)
    services.item_skip(annotator=annotator, completion=item)
    with pytest.raises(ApplicationError, match="not in your queue"):
        services.rating_create(annotator=annotator, completion=item, score=5)


def test_an_item_the_queue_would_offer_may_be_rated_without_a_lease(project, annotator, make_completion):
    """The no-lease path stays open for an item still in the queue (an expired, reclaimed lease)."""
    item = make_completion(project)
    assert item.pk in selectors.queue_candidate_ids(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=4)
    assert Lease.objects.get(completion=item, annotator=annotator).fulfilled


def test_the_second_completion_of_a_pair_cannot_be_skipped_by_id(tiny_model_dir, models_dir, annotator, make_completion):
    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    pair = make_pair(project, make_completion)
    with pytest.raises(ApplicationError, match="not in your queue"):
        services.item_skip(annotator=annotator, completion=pair.completion_b)
    services.comparison_create(annotator=annotator, pair=pair, choice="a", a_on_left=True)
    assert Comparison.objects.count() == 1


def test_a_comparison_of_a_held_out_pair_is_refused(tiny_model_dir, models_dir, annotator, make_completion):
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.services import prompts_create

    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    prompts_create(project=project, rows=[PromptRow(line=1, text="held", held_out=True)])
    pair = make_pair(project, make_completion, prompt=project.prompts.get(held_out=True))
    with pytest.raises(ApplicationError, match="held out"):
        services.comparison_create(annotator=annotator, pair=pair, choice="a", a_on_left=True)
    assert not Comparison.objects.exists() and not Rating.objects.exists()


def test_ratings_of_held_out_prompts_are_never_new_ratings_nor_in_a_training_batch(
    project, annotator, held_out_completion, make_completion
):
    from pgcore.config import PGConfig

    from webapp.training import services as training_services

    kept = make_completion(project)
    services.rating_create(annotator=annotator, completion=kept, score=5)
    stray = Rating.objects.create(completion=held_out_completion, annotator=annotator, score=1)  # stored by old code
    assert list(selectors.new_ratings(project=project)) == [Rating.objects.get(completion=kept)]
    batch = training_services.training_batch_build(
        project=project, ratings=list(Rating.objects.all()), config=PGConfig(annotator_norm=False)
    )
    assert batch.completion_ids == [kept.token_ids] and batch.rewards == [1.0]
    with pytest.raises(ApplicationError, match="training prompts"):
        training_services.training_batch_build(project=project, ratings=[stray], config=PGConfig())
