"""Undo of the last judgment: within 10 minutes, history kept, the item comes back to be rated again."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation import selectors, services
from webapp.annotation.models import Comparison, Completion, Lease, Rating, RatingRevision
from webapp.errors import ApplicationError
from webapp.training.models import TrainingRun


def test_undo_withdraws_the_last_rating_keeps_it_as_history_and_gives_the_item_back(
    project, annotator, make_completion
):
    first, second, third = (make_completion(project) for _ in range(3))
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=first, score=2)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=second, score=4, comment="fine")
    next_lease = services.lease_next(project=project, annotator=annotator)
    assert next_lease.completion_id == third.pk

    result = services.judgment_undo(project=project, annotator=annotator)

    assert result.lease.completion_id == second.pk and not result.lease.fulfilled
    assert list(Rating.objects.values_list("completion_id", "score")) == [(first.pk, 2)]
    revision = RatingRevision.objects.get()
    assert (revision.completion_id, revision.score, revision.comment, revision.action) == (second.pk, 4, "fine", "undone")
    assert not Lease.objects.filter(completion=third).exists()  # the item they were on went back to the queue
    assert selectors.lease_held(project=project, annotator=annotator).completion_id == second.pk


def test_rating_the_undone_item_again_is_the_change_and_both_values_are_kept(project, annotator, make_completion):
    completion = make_completion(project)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=completion, score=1)
    services.judgment_undo(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=completion, score=5)
    assert list(Rating.objects.values_list("score", flat=True)) == [5]
    assert list(RatingRevision.objects.values_list("score", flat=True)) == [1]


def test_undo_twice_walks_back_two_ratings(project, annotator, make_completion):
    a, b = make_completion(project), make_completion(project)
    for completion, score in [(a, 3), (b, 4)]:
        services.lease_next(project=project, annotator=annotator)
        services.rating_create(annotator=annotator, completion=completion, score=score)
    services.judgment_undo(project=project, annotator=annotator)
    result = services.judgment_undo(project=project, annotator=annotator)
    assert result.lease.completion_id == a.pk
    assert not Rating.objects.exists()
    assert sorted(RatingRevision.objects.values_list("score", flat=True)) == [3, 4]
    assert Lease.objects.filter(annotator=annotator, fulfilled=False).count() == 1


def test_a_rating_older_than_ten_minutes_cannot_be_undone(project, annotator, make_completion):
    completion = make_completion(project)
    rating = services.rating_create(annotator=annotator, completion=completion, score=3)
    Rating.objects.filter(pk=rating.pk).update(created_at=timezone.now() - timedelta(minutes=10, seconds=1))
    with pytest.raises(ApplicationError, match="nothing to undo"):
        services.judgment_undo(project=project, annotator=annotator)
    assert Rating.objects.count() == 1 and not RatingRevision.objects.exists()


def test_a_rating_a_training_run_has_taken_cannot_be_undone(project, annotator, make_completion):
    rating = services.rating_create(annotator=annotator, completion=make_completion(project), score=3)
    run = TrainingRun.objects.create(project=project, trigger="manual", parent_version=project.served_version)
    run.ratings.add(rating)
    with pytest.raises(ApplicationError, match="already being used to train"):
        services.judgment_undo(project=project, annotator=annotator)
    assert Rating.objects.filter(pk=rating.pk).exists()


def test_undo_only_touches_the_annotators_own_judgments(project, make_user, make_completion):
    a, b = make_user("a"), make_user("b")
    services.rating_create(annotator=a, completion=make_completion(project), score=3)
    with pytest.raises(ApplicationError, match="nothing to undo"):
        services.judgment_undo(project=project, annotator=b)
    assert Rating.objects.count() == 1


def test_undoing_a_comparison_keeps_choice_and_side_and_shows_the_pair_the_same_way(
    db, tiny_model_dir, models_dir, annotator, make_completion
):
    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    pair = make_pair(project, make_completion)
    lease = services.lease_next(project=project, annotator=annotator)
    services.comparison_create(annotator=annotator, pair=pair, choice="tie", comment="same")
    result = services.judgment_undo(project=project, annotator=annotator)
    assert not Comparison.objects.exists() and not Rating.objects.exists()
    revision = RatingRevision.objects.get()
    assert (revision.pair_id, revision.choice, revision.a_on_left, revision.comment) == (
        pair.pk, "tie", lease.a_on_left, "same"
    )
    assert result.lease.completion_id == pair.completion_a_id and result.lease.a_on_left == lease.a_on_left


def test_the_rating_counter_the_queue_index_uses_follows_ratings_comparisons_and_undos(
    db, tiny_model_dir, models_dir, project, annotator, make_completion
):
    from webapp.annotation.models import Completion

    completion = make_completion(project)
    services.rating_create(annotator=annotator, completion=completion, score=4)
    assert Completion.objects.get(pk=completion.pk).n_ratings == 1
    services.judgment_undo(project=project, annotator=annotator)
    assert Completion.objects.get(pk=completion.pk).n_ratings == 0

    pairwise = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    pair = make_pair(pairwise, make_completion)
    services.comparison_create(annotator=annotator, pair=pair, choice="a", a_on_left=True)
    counts = dict(Completion.objects.filter(project=pairwise).values_list("pk", "n_ratings"))
    assert counts == {pair.completion_a_id: 1, pair.completion_b_id: 1}


def test_an_undone_item_whose_lease_is_gone_takes_a_free_slot_the_one_way_leases_take_slots(
    project, annotator, make_user, make_completion
):
    item = make_completion(project)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=2)
    Lease.objects.all().delete()  # e.g. removed by a mode switch
    other = make_user("other")
    Lease.objects.create(
        completion=item, annotator=other, slot=0, expires_at=timezone.now() + timedelta(minutes=5), rating_mode="likert"
    )
    result = services.judgment_undo(project=project, annotator=annotator)
    assert result.lease is None  # the only slot is someone else's now: no second lease on it
    assert list(Lease.objects.values_list("annotator_id", "slot")) == [(other.pk, 0)]

    Lease.objects.all().delete()
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=3)
    Lease.objects.all().delete()
    result = services.judgment_undo(project=project, annotator=annotator)
    assert (result.lease.completion_id, result.lease.slot, result.lease.fulfilled) == (item.pk, 0, False)


def test_after_a_mode_switch_undo_never_reaches_past_the_newest_judgment_of_the_old_mode(
    db, tiny_model_dir, models_dir, annotator, make_completion
):
    """Likert rating, switch to pairwise, a comparison, switch back: the newest judgment is the
    comparison, so undo in Likert refuses (it does not undo the older Likert rating instead)."""
    project = make_project(tiny_model_dir, slug="switch", mode="likert")
    rated = make_completion(project)
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=rated, score=4)
    project.rating_mode = "pairwise"
    project.save(update_fields=["rating_mode"])
    pair = make_pair(project, make_completion)
    services.lease_next(project=project, annotator=annotator)
    services.comparison_create(annotator=annotator, pair=pair, choice="a")
    project.rating_mode = "likert"
    project.save(update_fields=["rating_mode"])

    with pytest.raises(ApplicationError, match=r"last judgment \(a comparison\) was made before the project's rating mode"):
        services.judgment_undo(project=project, annotator=annotator)
    assert Rating.objects.filter(completion=rated, score=4).exists() and Comparison.objects.count() == 1
    assert not RatingRevision.objects.exists()

    project.rating_mode = "pairwise"  # back in the comparison's mode, it is the one undone
    project.save(update_fields=["rating_mode"])
    services.judgment_undo(project=project, annotator=annotator)
    assert not Comparison.objects.exists() and Rating.objects.filter(completion=rated, score=4).exists()


def test_the_history_page_lists_an_undone_rating_marked_undone_beside_the_rating_that_replaced_it(
    project, annotator, make_completion, client
):
    item = make_completion(project, text="rated twice")
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=1, comment="first thought")
    services.judgment_undo(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=item, score=5)

    rows = selectors.recent_judgments(project=project, annotator=annotator)
    assert [(r["judgment"], r["undone"] is not None) for r in rows] == [("5", False), ("1", True)]
    assert rows[1]["comment"] == "first thought" and rows[1]["outputs"][0]["text"] == "rated twice"

    client.force_login(annotator)
    page = client.get(f"/p/{project.slug}/annotate/history/").content.decode()
    assert page.count("rated twice") == 2
    assert page.count('class="undone-mark"') == 1 and "first thought" in page


def test_undone_comparisons_and_rankings_are_listed_in_the_history_in_their_mode(
    db, tiny_model_dir, models_dir, annotator, make_completion
):
    from tests.webapp.annotation_helpers import make_rank_group

    project = make_project(tiny_model_dir, slug="undo-hist", mode="pairwise")
    pair = make_pair(project, make_completion, texts=("pair left", "pair right"))
    services.lease_next(project=project, annotator=annotator)
    services.comparison_create(annotator=annotator, pair=pair, choice="b")
    services.judgment_undo(project=project, annotator=annotator)
    project.rating_mode = "ranking"
    project.save(update_fields=["rating_mode"])
    group = make_rank_group(project, make_completion, k=2, texts=["rank x", "rank y"])
    order = list(Completion.objects.filter(rank_group=group).order_by("-id").values_list("pk", flat=True))
    services.ranking_create(annotator=annotator, group=group, order=order)
    services.judgment_undo(project=project, annotator=annotator)

    rows = selectors.recent_judgments(project=project, annotator=annotator)

    assert [(r["mode"], r["judgment"], [o["label"] + " " + o["text"] for o in r["outputs"]]) for r in rows] == [
        ("Rank k outputs", "ranked best to worst", ["#1 rank y", "#2 rank x"]),
        ("Pairwise A/B", "B is better", ["A pair left", "B pair right"]),
    ]
    assert all(r["undone"] is not None for r in rows)
