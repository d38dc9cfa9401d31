"""Blind rating, handing the queue over to a newly served version (older leftovers offered until its
first batch lands, then retired), the low-water mark (issues 20 and 18)."""

import pytest

from webapp.annotation import selectors, services
from webapp.annotation.models import Completion, Lease, Rating
from webapp.policies import services as policy_services
from webapp.policies.models import ModelVersion


def _new_version(project, number=1):
    return ModelVersion.objects.create(
        project=project, number=number, kind="full", weights_path=project.base_model_path, parent=project.served_version
    )


@pytest.fixture
def member_client(client, annotator):
    client.force_login(annotator)
    return client


def _next_card(client, project):
    return client.post(f"/p/{project.slug}/annotate/next/", HTTP_HX_REQUEST="true").content.decode()


def test_the_card_does_not_say_which_version_wrote_the_completion(project, member_client, make_completion):
    v3 = _new_version(project, number=3)
    policy_services.version_promote(version=v3, refill_pool=False)
    project.refresh_from_db()
    item = make_completion(project, version=v3, text="an output to judge")

    card = _next_card(member_client, project)

    assert f'data-completion="{item.pk}"' in card
    assert "version" not in card.lower().replace("your recent judgments", "")
    assert "temperature" not in card.lower()


def test_the_history_shows_the_version_and_sampling_after_rating(project, annotator, member_client, make_completion):
    v2 = _new_version(project, number=2)
    policy_services.version_promote(version=v2, refill_pool=False)
    project.refresh_from_db()
    item = make_completion(project, version=v2, text="judged already", n_tokens=5)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=4)

    page = member_client.get(f"/p/{project.slug}/annotate/history/").content.decode()

    assert "judged already" in page
    assert "version 2 · 5 tokens" in page
    assert "temperature 1" in page


def test_the_history_lists_only_the_persons_own_judgments(project, annotator, make_user, member_client, make_completion):
    other = make_user("other")
    item = make_completion(project, text="somebody else's item")
    services.rating_create(annotator=other, completion=item, score=2)

    page = member_client.get(f"/p/{project.slug}/annotate/history/").content.decode()

    assert "somebody else" not in page
    assert "not judged anything" in page


def test_a_pairwise_history_shows_both_outputs_versions(tiny_model_dir, models_dir, annotator, make_completion, client):
    from tests.webapp.annotation_helpers import make_pair, make_project

    project = make_project(tiny_model_dir, slug="pw-hist", mode="pairwise")
    pair = make_pair(project, make_completion)
    services.lease_next(project=project, annotator=annotator)
    services.comparison_create(annotator=annotator, pair=pair, choice="a")
    client.force_login(annotator)

    page = client.get(f"/p/{project.slug}/annotate/history/").content.decode()

    assert "A is better" in page
    assert page.count("version 0 ·") == 2


def test_right_after_a_serve_the_queue_offers_older_leftovers_instead_of_nothing(project, make_user, make_completion):
    old_open = make_completion(project, text="old open")
    v1 = _new_version(project)

    policy_services.version_promote(version=v1, refill_pool=False)

    project.refresh_from_db()
    old_open.refresh_from_db()
    assert old_open.retired_at is None  # v1 has no item yet: nothing to hand over to
    lease = services.lease_next(project=project, annotator=make_user("next"))
    assert lease is not None and lease.completion_id == old_open.pk
    assert selectors.annotator_progress(project=project, annotator=make_user("counts"))["queue"] == 1


def test_the_served_versions_first_batch_retires_older_unrated_items_and_keeps_them(project, make_user, make_completion):
    rater = make_user("rater")
    old_open, old_rated = make_completion(project, text="old open"), make_completion(project, text="old rated")
    services.rating_create(annotator=rater, completion=old_rated, score=3)
    v1 = _new_version(project)
    policy_services.version_promote(version=v1, refill_pool=False)
    project.refresh_from_db()
    assert selectors.queue_candidate_ids(project=project, annotator=make_user("before")) == [old_open.pk]

    stored = services.completion_pool_refill(project=project, seed=0, max_new=services.GENERATION_BATCH)

    old_open.refresh_from_db()
    old_rated.refresh_from_db()
    assert stored > 0
    assert old_open.retired_at is not None
    assert old_rated.retired_at is None  # finished items are not leftovers
    assert Completion.objects.filter(pk=old_open.pk).exists()
    offered = selectors.queue_candidate_ids(project=project, annotator=make_user("later"), limit=100)
    assert offered and set(Completion.objects.filter(pk__in=offered).values_list("model_version", flat=True)) == {v1.pk}


def test_a_version_served_with_items_of_its_own_retires_older_leftovers_at_once(project, make_user, make_completion):
    old = make_completion(project, text="old")
    v1 = _new_version(project)
    new = make_completion(project, version=v1, text="sampled while v1 was the shadow candidate")

    policy_services.version_promote(version=v1, refill_pool=False)

    project.refresh_from_db()
    old.refresh_from_db()
    assert old.retired_at is not None
    assert selectors.queue_candidate_ids(project=project, annotator=make_user("a")) == [new.pk]


def test_a_retired_item_cannot_be_rated_without_a_lease(project, make_user, make_completion):
    old = make_completion(project)
    v1 = _new_version(project)
    make_completion(project, version=v1)
    policy_services.version_promote(version=v1, refill_pool=False)
    project.refresh_from_db()

    with pytest.raises(services.ApplicationError, match="not in your queue"):
        services.rating_create(annotator=make_user("late"), completion=old, score=3)


def test_an_item_leased_before_the_switch_can_still_be_rated(project, annotator, make_completion):
    old = make_completion(project)
    assert services.lease_next(project=project, annotator=annotator).completion_id == old.pk
    policy_services.version_promote(version=_new_version(project), refill_pool=False)
    project.refresh_from_db()

    rating = services.rating_create(annotator=annotator, completion=old, score=5)

    assert Rating.objects.filter(pk=rating.pk).exists()


def test_a_project_that_drains_older_versions_offers_them_after_the_served_ones(project, make_user, make_completion):
    project.drain_old_versions = True
    project.save()
    old = make_completion(project, text="old")
    v1 = _new_version(project)

    policy_services.version_promote(version=v1, refill_pool=False)

    project.refresh_from_db()
    new = make_completion(project, version=v1)
    assert services.completions_retire_older(project=project) == 0  # what a batch of v1 would do: nothing here

    old.refresh_from_db()
    assert old.retired_at is None
    assert selectors.queue_candidate_ids(project=project, annotator=make_user("a")) == [new.pk, old.pk]


def test_serving_an_older_version_again_brings_back_its_retired_items(project, make_user, make_completion):
    v0 = project.served_version
    old = make_completion(project)
    v1 = _new_version(project)
    newer = make_completion(project, version=v1)
    policy_services.version_promote(version=v1, refill_pool=False)
    project.refresh_from_db()
    old.refresh_from_db()
    assert old.retired_at is not None

    policy_services.version_promote(version=v0, refill_pool=False)
    project.refresh_from_db()

    old.refresh_from_db()
    newer.refresh_from_db()
    assert old.retired_at is None
    assert newer.retired_at is not None  # v0 has items again, so v1's leftovers go at once
    assert selectors.queue_candidate_ids(project=project, annotator=make_user("a")) == [old.pk]


def test_retired_items_do_not_count_in_the_queue_shown_to_the_annotator(project, annotator, make_completion):
    for i in range(3):
        make_completion(project, text=f"old {i}")
    v1 = _new_version(project)
    make_completion(project, version=v1)
    policy_services.version_promote(version=v1, refill_pool=False)
    project.refresh_from_db()

    assert selectors.annotator_progress(project=project, annotator=annotator)["queue"] == 1


def test_the_pool_asks_for_a_refill_below_the_low_water_mark_only(project, make_completion):
    project.pool_target, project.pool_low_water = 8, 3
    project.save()
    for i in range(3):
        make_completion(project, text=f"ready {i}")
    assert not selectors.pool_needs_refill(project=project)

    Completion.objects.filter(pk=Completion.objects.order_by("id").first().pk).delete()

    assert selectors.pool_needs_refill(project=project)


def test_items_annotators_hold_are_not_ready_so_the_low_water_mark_counts_only_free_ones(
    project, make_completion, django_user_model
):
    # With as many annotators as the mark, counting held items as ready asked for a refill only
    # once the free ones were gone: 16 simulated annotators at pool 32 / mark 16 waited 16 times.
    from datetime import timedelta

    from django.utils import timezone

    from webapp.annotation.models import Lease

    project.pool_target, project.pool_low_water = 4, 4
    project.save()
    for i in range(4):
        make_completion(project, text=f"ready {i}")
    assert not selectors.pool_needs_refill(project=project)

    holders = [django_user_model.objects.create_user(f"holder{i}", password="pw-12345678") for i in range(2)]
    leases = [services.lease_next(project=project, annotator=who) for who in holders]
    assert all(lease is not None for lease in leases)

    assert selectors.pool_size(project=project) == 4  # still open: nobody rated them
    assert selectors.pool_free(project=project) == 2
    assert selectors.pool_needs_refill(project=project)

    Lease.objects.filter(pk=leases[0].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert selectors.pool_free(project=project) == 3  # an expired lease gives its item back


def test_a_low_water_mark_above_the_pool_size_refills_whenever_anything_is_missing(project, make_completion):
    project.pool_target, project.pool_low_water = 2, 16
    project.save()
    make_completion(project)
    assert selectors.pool_needs_refill(project=project)
    make_completion(project)
    assert not selectors.pool_needs_refill(project=project)


def _switch_mode(project, mode):
    from webapp.policies.models import Project

    Project.objects.filter(pk=project.pk).update(rating_mode=mode)
    project.refresh_from_db()


def test_the_history_lists_judgments_of_every_mode_newest_first_after_mode_switches(
    tiny_model_dir, models_dir, annotator, make_completion, client
):
    from tests.webapp.annotation_helpers import make_pair, make_project, make_rank_group

    project = make_project(
        tiny_model_dir, slug="modes-hist", mode="likert", gold_rate=1.0,
        rubric=[{"name": "helpful", "weight": 2}, {"name": "fluent", "weight": 1}],
    )
    gold = make_completion(project, text="a gold likert item")
    services.gold_item_set(completion=gold, answer={"score": 4})
    assert services.lease_next(project=project, annotator=annotator).completion_id == gold.pk  # gold comes leased
    services.rating_create(annotator=annotator, completion=gold, score=4)
    services.rating_create(annotator=annotator, completion=make_completion(project, text="likert item"), score=2)
    _switch_mode(project, "thumbs")
    services.rating_create(annotator=annotator, completion=make_completion(project, text="thumbs item"), thumbs_up=False)
    _switch_mode(project, "pairwise")
    pair = make_pair(project, make_completion, texts=("pair left", "pair right"))
    services.comparison_create(annotator=annotator, pair=pair, choice="b")
    _switch_mode(project, "ranking")
    group = make_rank_group(project, make_completion, texts=["rank x", "rank y", "rank z"])
    order = list(Completion.objects.filter(rank_group=group).order_by("-id").values_list("pk", flat=True))
    services.ranking_create(annotator=annotator, group=group, order=order)
    _switch_mode(project, "rubric")
    services.rating_create(
        annotator=annotator, completion=make_completion(project, text="rubric item"), criteria={"helpful": 5, "fluent": 3}
    )
    client.force_login(annotator)

    page = client.get(f"/p/{project.slug}/annotate/history/").content.decode()

    texts = ["rubric item", "rank ", "pair left", "thumbs item", "likert item", "a gold likert item"]
    positions = [page.index(t) for t in texts]
    assert positions == sorted(positions), "newest first, every mode"
    for shown in ("Rubric: named criteria 1–5", "Rank k outputs", "Pairwise A/B", "Thumbs up/down", "Likert 1–5"):
        assert shown in page
    assert "helpful: <strong>5</strong>" in page and "(weight 2" in page
    assert "B is better" in page and "thumbs down" in page and "ranked best to worst" in page
    assert page.count("gold item") == 1
    assert page.count("version 0 ·") == 1 + 2 + 3 + 1 + 1 + 1


def test_a_batch_of_the_served_version_keeps_the_shadow_candidates_items(project, make_user, make_completion):
    from webapp.policies.models import Project

    v1 = _new_version(project)
    candidate = make_completion(project, version=v1, text="the shadow queue's")
    Project.objects.filter(pk=project.pk).update(shadow_version=v1, shadow_share=0.5)
    project.refresh_from_db()

    assert services.completion_pool_refill(project=project, seed=0, max_new=services.GENERATION_BATCH) > 0

    candidate.refresh_from_db()
    assert candidate.retired_at is None
    assert candidate.pk not in selectors.queue_candidate_ids(project=project, annotator=make_user("a"), limit=100)
    assert candidate.pk in selectors.queue_candidate_ids(project=project, annotator=make_user("b"), order="shadow")


def test_the_queue_count_leaves_out_the_item_on_the_annotators_screen(project, annotator, make_completion):
    first, second = make_completion(project), make_completion(project)
    assert selectors.annotator_progress(project=project, annotator=annotator)["queue"] == 2  # nothing held yet

    lease = services.lease_next(project=project, annotator=annotator)
    assert selectors.annotator_progress(project=project, annotator=annotator)["queue"] == 1  # the other one

    services.rating_create(annotator=annotator, completion=lease.completion, score=4)
    services.lease_next(project=project, annotator=annotator)  # the last item, now on screen
    assert selectors.annotator_progress(project=project, annotator=annotator)["queue"] == 0  # nothing after it
    assert {first.pk, second.pk} == set(Lease.objects.values_list("completion_id", flat=True))
