"""Gold items: known answers mixed into the queue, each annotator's gold accuracy, down-weighting in training."""

import pytest

from tests.webapp.annotation_helpers import make_pair, make_project, make_rank_group
from webapp.annotation import figures, selectors, services
from webapp.annotation.models import Lease, Rating
from webapp.errors import ApplicationError
from webapp.policies.models import AuditEvent
from webapp.training import pipeline
from webapp.training import services as training_services
from webapp.training.models import STEP_ORDER


@pytest.fixture
def gold_project(project):
    project.gold_rate = 1.0  # every card a gold item while one is left: deterministic
    project.save()
    return project


def _rate_next(project, person, score):
    lease = services.lease_next(project=project, annotator=person)
    services.rating_create(annotator=person, completion=lease.completion, score=score)
    return lease.completion_id


def test_gold_items_come_at_the_set_rate_to_every_annotator_beyond_ratings_per_item(gold_project, make_user, make_completion):
    gold = make_completion(gold_project, text="known to be a 4")
    services.gold_item_set(completion=gold, answer={"score": 4})
    ordinary = make_completion(gold_project)
    people = [make_user(f"g{i}") for i in range(3)]
    for person in people:
        assert _rate_next(gold_project, person, 4) == gold.pk  # ratings_per_item is 1, yet each gets it
    assert Rating.objects.filter(completion=gold).count() == 3
    assert _rate_next(gold_project, people[0], 3) == ordinary.pk  # their gold is used up: the queue goes on
    assert sorted(Lease.objects.filter(completion=gold).values_list("slot", flat=True)) == [0, 1, 2]


def test_at_gold_rate_zero_a_gold_item_is_never_offered_nor_counted_in_the_pool(project, annotator, make_completion):
    gold = make_completion(project)
    services.gold_item_set(completion=gold, answer={"score": 2})
    assert services.lease_next(project=project, annotator=annotator) is None
    assert selectors.pool_size(project=project) == 0
    with pytest.raises(ApplicationError, match="not in your queue"):  # not leased: refused like any item not offered
        services.rating_create(annotator=annotator, completion=gold, score=2)


def test_the_gold_rate_is_a_share_of_the_cards(project, django_user_model, make_completion):
    project.gold_rate = 0.5
    project.save()
    gold = make_completion(project)
    services.gold_item_set(completion=gold, answer={"score": 3})
    for _ in range(40):
        make_completion(project)
    got_gold = 0
    for i in range(40):
        person = django_user_model.objects.create(username=f"s{i}")
        got_gold += services.lease_next(project=project, annotator=person).completion_id == gold.pk
    assert 8 <= got_gold <= 32  # Binomial(40, 0.5): outside this with probability < 1e-4


def test_gold_accuracy_per_annotator_for_every_kind_of_item(tiny_model_dir, models_dir, make_user, make_completion, db):
    likert = make_project(tiny_model_dir, slug="gl", mode="likert", gold_rate=1.0)
    pairwise = make_project(tiny_model_dir, slug="gp", mode="pairwise", gold_rate=1.0)
    ranking = make_project(tiny_model_dir, slug="gr", mode="ranking", gold_rate=1.0, rank_k=3)
    good, sloppy = make_user("good"), make_user("sloppy")
    services.gold_item_set(completion=make_completion(likert), answer={"score": 4, "tolerance": 1})
    pair = make_pair(pairwise, make_completion)
    services.gold_item_set(completion=pair.completion_a, answer={"choice": "b"})
    group = make_rank_group(ranking, make_completion)
    best = sorted(group.members.values_list("pk", flat=True))[1]
    services.gold_item_set(completion=group.anchor, answer={"best": best})
    for person, score, choice, first in ((good, 5, "b", best), (sloppy, 2, "a", group.anchor_id)):
        _rate_next(likert, person, score)
        lease = services.lease_next(project=pairwise, annotator=person)
        services.comparison_create(annotator=person, pair=pair, choice=choice, a_on_left=lease.a_on_left)
        services.lease_next(project=ranking, annotator=person)
        others = [m for m in group.members.values_list("pk", flat=True) if m != first]
        services.ranking_create(annotator=person, group=group, order=[first, *others])
    for project in (likert, pairwise, ranking):
        scores = selectors.gold_accuracy(project=project)
        assert (scores[good.pk].correct, scores[good.pk].answered) == (1, 1)
        assert (scores[sloppy.pk].correct, scores[sloppy.pk].answered) == (0, 1)


@pytest.mark.parametrize(
    "answer, message",
    [({"score": 6}, "Likert gold answer"), ({"thumbs_up": True}, "Likert gold answer"), ("4", "is an object")],
)
def test_an_answer_that_does_not_fit_the_item_is_refused(project, make_completion, answer, message):
    with pytest.raises(ApplicationError, match=message):
        services.gold_item_set(completion=make_completion(project), answer=answer)
    assert not AuditEvent.objects.filter(action="gold_set").exists()


def test_editing_a_gold_answer_is_audit_logged_with_the_verdicts_it_turns(gold_project, make_user, make_completion, staff_user):
    gold = make_completion(gold_project)
    services.gold_item_set(completion=gold, answer={"score": 4}, actor=staff_user)
    people = [make_user(f"e{i}") for i in range(3)]
    for person, score in zip(people, (4, 2, 2)):
        _rate_next(gold_project, person, score)
    assert [s.correct for s in selectors.gold_accuracy(project=gold_project).values()] == [1, 0, 0]
    services.gold_item_set(completion=gold, answer={"score": 2}, actor=staff_user)
    event = AuditEvent.objects.filter(action="gold_set").first()  # newest first
    assert event.actor == staff_user and event.target == f"gold item {gold.pk}"
    assert event.detail == {"before": {"score": 4, "tolerance": 0}, "after": {"score": 2, "tolerance": 0}, "judgments": 3, "verdicts_changed": 3}
    assert [s.correct for s in selectors.gold_accuracy(project=gold_project).values()] == [0, 1, 1]
    assert AuditEvent.objects.filter(action="gold_set").count() == 2


def test_staff_see_each_annotators_gold_accuracy_and_training_weight(gold_project, make_user, make_completion, staff_client):
    gold_project.gold_min_answers = 1
    gold_project.save()
    services.gold_item_set(completion=make_completion(gold_project), answer={"score": 5})
    good, sloppy = make_user("good"), make_user("sloppy")
    _rate_next(gold_project, good, 5)
    _rate_next(gold_project, sloppy, 1)
    rows = {f.username: f for f in figures.annotator_figures(project=gold_project)}
    assert (rows["good"].gold_accuracy, rows["good"].weight) == (1.0, 1.0)
    assert (rows["sloppy"].gold_accuracy, rows["sloppy"].weight) == (0.0, gold_project.gold_low_weight)
    page = staff_client.get(f"/p/{gold_project.slug}/figures/").content.decode()
    assert "Gold accuracy" in page and "0 / 1" in page and "0.25" in page


def test_ratings_of_an_annotator_below_the_gold_bar_weigh_less_in_the_training_batch(
    gold_project, make_user, make_completion
):
    gold_project.ratings_per_item = 2
    gold_project.gold_min_answers = 2
    gold_project.gold_min_accuracy = 0.7
    gold_project.gold_low_weight = 0.25
    gold_project.pg_config = {**gold_project.pg_config, "annotator_norm": False}
    gold_project.save()
    for score in (5, 1):
        services.gold_item_set(completion=make_completion(gold_project), answer={"score": score})
    shared, sloppy_only = make_completion(gold_project, text="shared"), make_completion(gold_project, text="sloppy's")
    good, sloppy = make_user("good"), make_user("sloppy")
    for person, answers in ((good, (5, 1)), (sloppy, (1, 5))):  # the sloppy one gets both gold items wrong
        for score in answers:
            _rate_next(gold_project, person, score)
    services.rating_create(annotator=good, completion=shared, score=5)  # +1
    services.rating_create(annotator=sloppy, completion=shared, score=1)  # -1, weighs 0.25
    services.rating_create(annotator=sloppy, completion=sloppy_only, score=5)
    assert selectors.annotator_weights(project=gold_project) == {sloppy.pk: 0.25}

    run = training_services.training_run_create(project=gold_project, trigger="manual")
    training_services.training_step_run(run_id=run.pk, step=STEP_ORDER[0], chain=False)
    batch = pipeline.batch_read(run=run)  # what the update step trains on, as the batch step stored it
    assert len(batch) == 2  # the gold items' ratings are not trained on
    order = sorted([shared.pk, sloppy_only.pk])
    reward = dict(zip(order, batch.rewards))
    weight = dict(zip(order, batch.weights))
    assert reward[shared.pk] == pytest.approx((1.0 - 0.25) / 1.25)
    assert weight == {shared.pk: 1.0, sloppy_only.pk: 0.25}


def test_a_gold_lease_records_that_it_was_chosen_as_gold_and_staff_see_it_counted(gold_project, make_user, make_completion, staff_client):
    from webapp.rewards import selectors as reward_selectors

    gold = make_completion(gold_project, text="known")
    services.gold_item_set(completion=gold, answer={"score": 3})
    ordinary = make_completion(gold_project)
    person = make_user("chooser")
    assert _rate_next(gold_project, person, 3) == gold.pk
    assert _rate_next(gold_project, person, 3) == ordinary.pk
    assert dict(Lease.objects.values_list("completion_id", "chosen_by")) == {gold.pk: "gold", ordinary.pk: "fifo"}
    counts = dict(reward_selectors.served_by_reason(project=gold_project))
    assert counts["Gold item (known answer, at the project's gold rate)"] == 1 and counts["Queue order (unfinished items first, then oldest)"] == 1


def test_an_undone_gold_judgment_whose_lease_is_gone_is_leased_back_as_gold(gold_project, make_user, make_completion):
    gold = make_completion(gold_project)
    services.gold_item_set(completion=gold, answer={"score": 3})
    people = [make_user(f"u{i}") for i in range(2)]
    for person in people:  # two gold leases: slots 0 and 1, past ratings_per_item (1)
        _rate_next(gold_project, person, 3)
    Lease.objects.filter(annotator=people[1]).delete()  # e.g. cleared by staff: the undo takes a new slot
    result = services.judgment_undo(project=gold_project, annotator=people[1])
    assert result.lease is not None and result.lease.completion_id == gold.pk
    lease = Lease.objects.get(annotator=people[1])
    assert (lease.chosen_by, lease.slot) == ("gold", 1)


def test_migration_0012_relabels_the_leases_a_gold_item_got_after_it_became_gold(project, make_user, make_completion):
    import importlib
    from datetime import timedelta

    from django.apps import apps
    from django.utils import timezone

    migration = importlib.import_module("webapp.annotation.migrations.0012_lease_chosen_by_gold")
    item, ordinary = make_completion(project), make_completion(project)
    before, after, other = (
        Lease.objects.create(completion=c, annotator=make_user(name), slot=slot, expires_at=timezone.now(), chosen_by="fifo", rating_mode="likert")
        for c, name, slot in ((item, "early", 0), (item, "late", 1), (ordinary, "plain", 0))
    )
    gold = services.gold_item_set(completion=item, answer={"score": 3})
    Lease.objects.filter(pk=before.pk).update(created_at=gold.created_at - timedelta(minutes=5))  # leased before it was gold
    Lease.objects.filter(pk=after.pk).update(created_at=gold.created_at + timedelta(minutes=5))
    migration.gold_leases_relabel(apps, None)
    assert dict(Lease.objects.values_list("annotator__username", "chosen_by")) == {"early": "fifo", "late": "gold", "plain": "fifo"}
