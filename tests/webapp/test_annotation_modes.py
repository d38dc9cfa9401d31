"""Thumbs and pairwise rating modes: storage, invariants in the database, pool refill, training on them."""

import pytest
from django.db import IntegrityError, transaction

from webapp.annotation import selectors, services
from webapp.annotation.models import Comparison, Completion, Lease, Pair, Rating
from webapp.errors import ApplicationError
from webapp.training import services as training_services

from tests.webapp.annotation_helpers import make_pair, make_project


@pytest.fixture
def thumbs_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="thumbs", mode="thumbs")


@pytest.fixture
def pairwise_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="pw", mode="pairwise")


# --- thumbs ----------------------------------------------------------------------


def test_a_thumbs_rating_is_stored_as_up_or_down(thumbs_project, annotator, make_completion):
    completion = make_completion(thumbs_project)
    services.lease_next(project=thumbs_project, annotator=annotator)
    rating = services.rating_create(annotator=annotator, completion=completion, thumbs_up=True, comment="nice 👍")
    rating.refresh_from_db()
    assert (rating.thumbs_up, rating.score, rating.comparison_id, rating.comment) == (True, None, None, "nice 👍")


@pytest.mark.parametrize("kwargs", [{"score": 4}, {"thumbs_up": None}, {"thumbs_up": 1}])
def test_a_thumbs_project_refuses_anything_but_up_or_down(thumbs_project, annotator, make_completion, kwargs):
    completion = make_completion(thumbs_project)
    with pytest.raises(ApplicationError, match="thumbs up or thumbs down"):
        services.rating_create(annotator=annotator, completion=completion, **kwargs)
    assert not Rating.objects.exists()


def test_a_likert_project_refuses_a_thumb(project, annotator, make_completion):
    with pytest.raises(ApplicationError, match="1 to 5"):
        services.rating_create(annotator=annotator, completion=make_completion(project), thumbs_up=True)


def test_database_refuses_a_rating_that_is_both_a_score_and_a_thumb(project, annotator, make_completion):
    completion = make_completion(project)
    with pytest.raises(IntegrityError), transaction.atomic():
        Rating.objects.create(completion=completion, annotator=annotator, score=3, thumbs_up=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        Rating.objects.create(completion=completion, annotator=annotator)


# --- pairwise --------------------------------------------------------------------


def test_pairwise_lease_is_on_the_pair_and_draws_a_side(pairwise_project, annotator, make_completion):
    pair = make_pair(pairwise_project, make_completion)
    lease = services.lease_next(project=pairwise_project, annotator=annotator)
    assert lease.completion_id == pair.completion_a_id
    assert lease.a_on_left in (True, False)


def test_sides_are_randomised_across_leases(pairwise_project, django_user_model, make_completion):
    for i in range(24):
        prompt = pairwise_project.prompts.all()[i % 6]
        make_pair(pairwise_project, make_completion, prompt=prompt)
    sides = set()
    for i in range(24):
        person = django_user_model.objects.create(username=f"u{i}")  # no password: hashing 24 is slow
        sides.add(services.lease_next(project=pairwise_project, annotator=person).a_on_left)
    assert sides == {True, False}  # 24 fair coin flips all equal: probability 2^-23


@pytest.mark.parametrize("a_on_left", [True, False])
def test_a_comparison_records_choice_side_shown_and_one_rating_per_completion(
    pairwise_project, annotator, make_completion, a_on_left
):
    pair = make_pair(pairwise_project, make_completion)
    lease = services.lease_next(project=pairwise_project, annotator=annotator)
    Lease.objects.filter(pk=lease.pk).update(a_on_left=a_on_left)
    comparison = services.comparison_create(
        annotator=annotator, pair=pair, choice="b", a_on_left=not a_on_left, comment="B <b>wins</b>"
    )
    comparison.refresh_from_db()
    assert (comparison.choice, comparison.a_on_left, comparison.comment) == ("b", a_on_left, "B <b>wins</b>")
    assert sorted(Rating.objects.values_list("completion_id", "comparison_id")) == [
        (pair.completion_a_id, comparison.pk),
        (pair.completion_b_id, comparison.pk),
    ]
    assert Lease.objects.get(pk=lease.pk).fulfilled
    assert selectors.pool_size(project=pairwise_project) == 0


def test_a_second_decision_on_the_same_pair_is_refused(pairwise_project, annotator, make_completion):
    pair = make_pair(pairwise_project, make_completion)
    services.lease_next(project=pairwise_project, annotator=annotator)
    services.comparison_create(annotator=annotator, pair=pair, choice="a")
    with pytest.raises(ApplicationError, match="compared this pair already"):
        services.comparison_create(annotator=annotator, pair=pair, choice="tie", a_on_left=True)
    assert list(Comparison.objects.values_list("choice", flat=True)) == ["a"]
    assert Rating.objects.count() == 2


def test_database_enforces_one_decision_per_annotator_and_pair(pairwise_project, annotator, make_completion):
    pair = make_pair(pairwise_project, make_completion)
    Comparison.objects.create(pair=pair, annotator=annotator, choice="a", a_on_left=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        Comparison.objects.create(pair=pair, annotator=annotator, choice="b", a_on_left=False)
    with pytest.raises(IntegrityError), transaction.atomic():
        Comparison.objects.create(pair=pair, annotator=annotator, choice="maybe", a_on_left=False)


def test_database_refuses_a_pair_of_one_completion_or_a_completion_in_two_pairs(pairwise_project, make_completion):
    a, b, c = (make_completion(pairwise_project) for _ in range(3))
    with pytest.raises(IntegrityError), transaction.atomic():
        Pair.objects.create(project=pairwise_project, completion_a=a, completion_b=a)
    Pair.objects.create(project=pairwise_project, completion_a=a, completion_b=b)
    with pytest.raises(IntegrityError), transaction.atomic():
        Pair.objects.create(project=pairwise_project, completion_a=c, completion_b=b)


def test_a_pair_needs_the_same_prompt(pairwise_project, make_completion):
    first, second = pairwise_project.prompts.all()[:2]
    with pytest.raises(ApplicationError, match="same prompt"):
        services.pair_create(
            completion_a=make_completion(pairwise_project, prompt=first),
            completion_b=make_completion(pairwise_project, prompt=second),
        )


def test_unknown_choices_are_refused(pairwise_project, annotator, make_completion):
    pair = make_pair(pairwise_project, make_completion)
    with pytest.raises(ApplicationError, match="A, B, tie or both bad"):
        services.comparison_create(annotator=annotator, pair=pair, choice="left", a_on_left=True)


def test_pairwise_pool_refill_samples_two_completions_of_each_prompt_from_the_served_version(pairwise_project):
    created = services.completion_pool_refill(project=pairwise_project, seed=4)
    assert created == pairwise_project.pool_target == Completion.objects.count() == 2 * Pair.objects.count()
    for pair in Pair.objects.select_related("completion_a", "completion_b"):
        a, b = pair.completion_a, pair.completion_b
        assert a.prompt_id == b.prompt_id and a.pk != b.pk
        assert a.model_version_id == b.model_version_id == pairwise_project.served_version_id
    assert selectors.pool_size(project=pairwise_project) == pairwise_project.pool_target
    assert services.completion_pool_refill(project=pairwise_project) == 0


# --- training on the new modes ---------------------------------------------------------


def _batch(project, config_overrides=None):
    ratings = list(selectors.new_ratings(project=project))
    config = training_services.pg_config_for(project=project, overrides={"annotator_norm": False, **(config_overrides or {})})
    return training_services.training_batch_build(project=project, ratings=ratings, config=config)


@pytest.mark.parametrize(
    "choice,rewards", [("a", [1.0, -1.0]), ("b", [-1.0, 1.0]), ("tie", [0.0, 0.0]), ("both_bad", [-1.0, -1.0])]
)
def test_a_pairwise_choice_becomes_rewards_for_both_completions_in_one_group(
    pairwise_project, annotator, make_completion, choice, rewards
):
    pair = make_pair(pairwise_project, make_completion)
    services.comparison_create(annotator=annotator, pair=pair, choice=choice, a_on_left=False)
    batch = _batch(pairwise_project)
    assert batch.rewards == rewards  # ordered by completion id: a then b
    assert batch.group_ids[0] == batch.group_ids[1] == pair.completion_a.prompt_id


def test_thumbs_become_plus_and_minus_one(thumbs_project, annotator, make_completion):
    up, down = make_completion(thumbs_project), make_completion(thumbs_project)
    services.rating_create(annotator=annotator, completion=up, thumbs_up=True)
    services.rating_create(annotator=annotator, completion=down, thumbs_up=False)
    assert _batch(thumbs_project).rewards == [1.0, -1.0]


def test_a_training_run_on_pairwise_ratings_succeeds_and_serves_a_new_version(pairwise_project, make_user):
    pairwise_project.ratings_per_item = 2
    pairwise_project.save()
    services.completion_pool_refill(project=pairwise_project, seed=5)
    people = [make_user("p1"), make_user("p2")]
    for i, pair in enumerate(Pair.objects.all()):
        for j, person in enumerate(people):
            choice = ["a", "b", "tie", "both_bad"][(i + j) % 4]
            services.comparison_create(annotator=person, pair=pair, choice=choice, a_on_left=True)
    run = training_services.training_run_create(project=pairwise_project, trigger="manual")
    run = training_services.training_run_execute(run_id=run.pk)
    assert run.status == "succeeded", run.error
    pairwise_project.refresh_from_db()
    assert pairwise_project.served_version == run.result_version and run.result_version.number == 1
    assert run.ratings.count() == 2 * 2 * Pair.objects.count()  # the run sampled no pairs of v1
