from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from webapp.annotation import selectors, services
from webapp.annotation.models import Lease, Rating
from webapp.errors import ApplicationError


def test_two_annotators_are_leased_different_items_with_overlap_one(project, make_user, make_completion):
    make_completion(project), make_completion(project)
    a, b = make_user("a"), make_user("b")
    lease_a = services.lease_next(project=project, annotator=a)
    lease_b = services.lease_next(project=project, annotator=b)
    assert lease_a.completion_id != lease_b.completion_id
    assert services.lease_next(project=project, annotator=make_user("c")) is None


def test_asking_again_returns_the_same_lease(project, annotator, make_completion):
    make_completion(project), make_completion(project)
    first = services.lease_next(project=project, annotator=annotator)
    assert services.lease_next(project=project, annotator=annotator).pk == first.pk


def test_overlap_two_gives_each_item_to_two_people(project, make_user, make_completion):
    project.ratings_per_item = 2
    project.save()
    only = make_completion(project)
    a, b, c = make_user("a"), make_user("b"), make_user("c")
    assert services.lease_next(project=project, annotator=a).completion_id == only.pk
    assert services.lease_next(project=project, annotator=b).completion_id == only.pk
    assert services.lease_next(project=project, annotator=c) is None
    assert sorted(Lease.objects.values_list("slot", flat=True)) == [0, 1]


def test_database_refuses_a_second_lease_on_the_same_slot(project, make_user, make_completion):
    completion = make_completion(project)
    later = timezone.now() + timedelta(minutes=5)
    Lease.objects.create(completion=completion, annotator=make_user("a"), slot=0, expires_at=later, rating_mode="likert")
    with pytest.raises(IntegrityError), transaction.atomic():
        Lease.objects.create(completion=completion, annotator=make_user("b"), slot=0, expires_at=later, rating_mode="likert")


def test_database_refuses_a_lease_without_a_known_rating_mode(project, annotator, make_completion):
    """A lease records the mode it was taken under; one without (the field's empty value) would be skipped
    as another mode's and never shown, so the database refuses it."""
    completion = make_completion(project)
    later = timezone.now() + timedelta(minutes=5)
    for mode in ("", "stars"):
        with pytest.raises(IntegrityError), transaction.atomic():
            Lease.objects.create(completion=completion, annotator=annotator, slot=0, expires_at=later, rating_mode=mode)
    Lease.objects.create(completion=completion, annotator=annotator, slot=0, expires_at=later, rating_mode="thumbs")


def test_an_expired_lease_goes_back_to_the_queue(project, make_user, make_completion):
    make_completion(project)
    a, b = make_user("a"), make_user("b")
    lease = services.lease_next(project=project, annotator=a)
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.lease_next(project=project, annotator=b).completion_id == lease.completion_id


def test_rating_fulfils_the_lease_and_the_next_item_is_another(project, annotator, make_completion):
    make_completion(project), make_completion(project)
    lease = services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=lease.completion, score=4)
    assert Lease.objects.get(pk=lease.pk).fulfilled
    assert services.lease_next(project=project, annotator=annotator).completion_id != lease.completion_id


def test_a_double_submit_stores_one_rating(project, annotator, make_completion):
    completion = make_completion(project)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=completion, score=5)
    with pytest.raises(ApplicationError, match="rated this item already"):
        services.rating_create(annotator=annotator, completion=completion, score=2)
    assert list(Rating.objects.values_list("score", flat=True)) == [5]


def test_database_enforces_one_rating_per_annotator_and_completion(project, annotator, make_completion):
    completion = make_completion(project)
    Rating.objects.create(completion=completion, annotator=annotator, score=3)
    with pytest.raises(IntegrityError), transaction.atomic():
        Rating.objects.create(completion=completion, annotator=annotator, score=4)


@pytest.mark.parametrize("score", [0, 6, "3"])
def test_scores_outside_one_to_five_are_refused(project, annotator, make_completion, score):
    completion = make_completion(project)
    with pytest.raises(ApplicationError, match="1 to 5"):
        services.rating_create(annotator=annotator, completion=completion, score=score)
    assert not Rating.objects.exists()


def test_a_skipped_item_is_not_offered_to_the_same_annotator_again(project, make_user, make_completion):
    make_completion(project)
    a, b = make_user("a"), make_user("b")
    lease = services.lease_next(project=project, annotator=a)
    services.item_skip(annotator=a, completion=lease.completion)
    assert services.lease_next(project=project, annotator=a) is None
    assert services.lease_next(project=project, annotator=b).completion_id == lease.completion_id


def test_held_out_prompts_are_never_served(project, annotator, make_completion):
    make_completion(project, prompt=project.prompts.get(held_out=True))
    assert services.lease_next(project=project, annotator=annotator) is None
    assert selectors.pool_size(project=project) == 0


def test_pool_size_counts_only_unrated_completions_of_the_served_version(project, annotator, make_completion):
    rated, _open = make_completion(project), make_completion(project)
    Rating.objects.create(completion=rated, annotator=annotator, score=3)
    assert selectors.pool_size(project=project) == 1


def test_the_served_versions_items_come_first_and_half_rated_items_before_fresh_ones(project, make_user, make_completion):
    from webapp.policies.models import ModelVersion

    project.ratings_per_item = 2
    project.drain_old_versions = True  # else the first batch of v1 would retire the older items
    project.save()
    old_item = make_completion(project, text="from v0")
    v1 = ModelVersion.objects.create(
        project=project, number=1, kind="full", weights_path=project.base_model_path, parent=project.served_version
    )
    project.served_version = v1
    project.save()
    fresh, half_rated = make_completion(project, version=v1), make_completion(project, version=v1)
    services.rating_create(annotator=make_user("first"), completion=half_rated, score=3)

    order = selectors.queue_candidate_ids(project=project, annotator=make_user("next"))

    assert order == [half_rated.pk, fresh.pk, old_item.pk]


def test_a_rating_without_a_lease_cannot_take_an_item_someone_else_holds(project, make_user, make_completion):
    make_completion(project)
    holder, intruder = make_user("holder"), make_user("intruder")
    lease = services.lease_next(project=project, annotator=holder)
    with pytest.raises(ApplicationError, match="Someone else holds this item now") as refused:
        services.rating_create(annotator=intruder, completion=lease.completion, score=1)
    assert "after your lease expired" not in refused.value.message  # the intruder never held a lease
    services.rating_create(annotator=holder, completion=lease.completion, score=5)
    assert list(Rating.objects.values_list("annotator__username", "score")) == [("holder", 5)]


def test_a_project_without_a_served_version_still_offers_its_items(project, annotator, make_completion):
    item = make_completion(project)
    type(project).objects.filter(pk=project.pk).update(served_version=None)
    project.refresh_from_db()
    assert services.lease_next(project=project, annotator=annotator).completion_id == item.pk
