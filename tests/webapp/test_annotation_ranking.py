"""Ranking mode: k completions of one prompt put in order, stored as the pairwise comparisons it implies.

Checked through what uses it: leases, undo, the pool, training's batch, the exports, the reward
model's judgments, the agreement statistics and the page.
"""

import json

import pytest
from django.db import IntegrityError, transaction

from tests.webapp.annotation_helpers import make_project, make_rank_group
from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.annotation import figures, selectors, services
from webapp.annotation.models import Completion, RankedPair, RankGroup, Ranking, Rating, RatingRevision
from webapp.errors import ApplicationError
from webapp.training import exports
from webapp.training import services as training_services


@pytest.fixture
def ranking_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="rk", mode="ranking", rank_k=3, pool_target=6)


def _lease_and_rank(project, person, order_of):
    lease = services.lease_next(project=project, annotator=person)
    group = RankGroup.objects.get(anchor_id=lease.completion_id)
    members = [m.pk for m in lease.completion.ranked_members]
    return services.ranking_create(annotator=person, group=group, order=order_of(members), shown_order=members)


def test_a_ranking_lease_is_on_the_anchor_and_shows_every_output_in_an_order_kept_per_lease(
    ranking_project, annotator, make_completion
):
    group = make_rank_group(ranking_project, make_completion)
    lease = services.lease_next(project=ranking_project, annotator=annotator)
    assert lease.completion_id == group.anchor_id
    shown = [m.pk for m in lease.completion.ranked_members]
    assert sorted(shown) == sorted(group.members.values_list("pk", flat=True)) and len(shown) == 3
    again = selectors.lease_held(project=ranking_project, annotator=annotator)
    assert [m.pk for m in again.completion.ranked_members] == shown  # a reload shows the same order


def test_shown_orders_differ_across_leases(ranking_project, django_user_model, make_completion):
    prompts = list(ranking_project.prompts.all())
    for i in range(12):
        make_rank_group(ranking_project, make_completion, prompt=prompts[i % len(prompts)])
    orders = set()
    for i in range(12):
        person = django_user_model.objects.create(username=f"r{i}")
        lease = services.lease_next(project=ranking_project, annotator=person)
        members = lease.completion.ranked_members
        orders.add(tuple(sorted(range(3), key=lambda j: members[j].pk)))
    assert len(orders) > 1  # 12 draws of 6 orders all equal: probability 6^-11


def test_a_ranking_stores_its_order_one_rating_per_place_and_every_implied_pair(
    ranking_project, annotator, make_completion
):
    group = make_rank_group(ranking_project, make_completion, k=3)
    services.lease_next(project=ranking_project, annotator=annotator)
    a, b, c = sorted(group.members.values_list("pk", flat=True))
    ranking = services.ranking_create(annotator=annotator, group=group, order=[b, c, a], comment="b clearly best")
    assert ranking.order == [b, c, a] and ranking.comment == "b clearly best"
    assert dict(Rating.objects.values_list("completion_id", "rank")) == {b: 0, c: 1, a: 2}
    assert set(RankedPair.objects.values_list("winner_id", "loser_id")) == {(b, c), (b, a), (c, a)}
    assert list(Completion.objects.filter(pk__in=[a, b, c]).values_list("n_ratings", flat=True)) == [1, 1, 1]
    assert selectors.lease_held(project=ranking_project, annotator=annotator) is None  # the lease is fulfilled


def test_a_second_ranking_of_the_same_outputs_is_refused_and_counted_once(ranking_project, annotator, make_completion):
    group = make_rank_group(ranking_project, make_completion, k=3)
    services.lease_next(project=ranking_project, annotator=annotator)
    a, b, c = sorted(group.members.values_list("pk", flat=True))
    services.ranking_create(annotator=annotator, group=group, order=[a, b, c])
    with pytest.raises(ApplicationError, match="ranked these outputs already"):
        services.ranking_create(annotator=annotator, group=group, order=[c, b, a])
    assert list(Ranking.objects.values_list("order", flat=True)) == [[a, b, c]]
    assert Rating.objects.count() == 3 and RankedPair.objects.count() == 3
    assert list(Completion.objects.filter(pk__in=[a, b, c]).values_list("n_ratings", flat=True)) == [1, 1, 1]


@pytest.mark.parametrize("bad", ["missing", "twice", "stranger", "strings"])
def test_an_order_that_is_not_every_output_once_is_refused_and_nothing_is_stored(
    ranking_project, annotator, make_completion, bad
):
    group = make_rank_group(ranking_project, make_completion, k=3)
    a, b, c = sorted(group.members.values_list("pk", flat=True))
    order = {"missing": [a, b], "twice": [a, a, b], "stranger": [a, b, c + 999], "strings": [str(a), str(b), str(c)]}[bad]
    with pytest.raises(ApplicationError, match="all 3 outputs in order"):
        services.ranking_create(annotator=annotator, group=group, order=order)
    assert not Ranking.objects.exists() and not Rating.objects.exists() and not RankedPair.objects.exists()


def test_a_second_ranking_of_the_same_group_is_refused(ranking_project, annotator, make_completion):
    group = make_rank_group(ranking_project, make_completion, k=2)
    order = list(group.members.values_list("pk", flat=True))
    services.ranking_create(annotator=annotator, group=group, order=order)
    with pytest.raises(ApplicationError):
        services.ranking_create(annotator=annotator, group=group, order=order[::-1])
    assert Ranking.objects.count() == 1 and Rating.objects.count() == 2


def test_database_refuses_a_rank_without_a_ranking(ranking_project, annotator, make_completion):
    completion = make_completion(ranking_project)
    with pytest.raises(IntegrityError), transaction.atomic():
        Rating.objects.create(completion=completion, annotator=annotator, score=3, rank=0)


def test_single_ratings_are_refused_in_a_ranking_project(ranking_project, annotator, make_completion):
    with pytest.raises(ApplicationError, match="ranks outputs"):
        services.rating_create(annotator=annotator, completion=make_completion(ranking_project), score=4)


def test_a_group_takes_its_ratings_per_item_annotators_and_no_more(ranking_project, make_user, make_completion):
    ranking_project.ratings_per_item = 2
    ranking_project.save()
    group = make_rank_group(ranking_project, make_completion)
    first, second, third = make_user("r1"), make_user("r2"), make_user("r3")
    for person in (first, second):
        _lease_and_rank(ranking_project, person, lambda m: m)
    assert services.lease_next(project=ranking_project, annotator=third) is None
    assert Ranking.objects.filter(group=group).count() == 2


def test_undo_of_a_ranking_keeps_it_as_a_revision_and_gives_the_group_back(ranking_project, annotator, make_completion):
    make_rank_group(ranking_project, make_completion)
    ranking = _lease_and_rank(ranking_project, annotator, lambda m: m[::-1])
    result = services.judgment_undo(project=ranking_project, annotator=annotator)
    assert result.revision.order == ranking.order and result.revision.completion_id == ranking.group.anchor_id
    assert not Ranking.objects.exists() and not Rating.objects.exists() and not RankedPair.objects.exists()
    assert set(Completion.objects.values_list("n_ratings", flat=True)) == {0}
    assert result.lease.completion_id == ranking.group.anchor_id
    again = _lease_and_rank(ranking_project, annotator, lambda m: m)
    assert again.order != ranking.order and RatingRevision.objects.count() == 1


def test_ranking_pool_refill_samples_k_completions_of_a_prompt_and_groups_them(ranking_project):
    created = services.completion_pool_refill(project=ranking_project, seed=3)
    assert created == ranking_project.pool_target == Completion.objects.count() == 3 * RankGroup.objects.count()
    for group in RankGroup.objects.all():
        members = list(group.members.all())
        assert len(members) == 3 and group.anchor in members
        assert len({(m.prompt_id, m.model_version_id) for m in members}) == 1
    assert selectors.pool_size(project=ranking_project) == ranking_project.pool_target
    assert services.completion_pool_refill(project=ranking_project) == 0


def test_a_ranking_becomes_rewards_equal_to_the_mean_of_its_implied_pairwise_rewards(
    ranking_project, annotator, make_completion
):
    ranking_project.rank_k = 4
    ranking_project.save()
    group = make_rank_group(ranking_project, make_completion, k=4)
    order = sorted(group.members.values_list("pk", flat=True), reverse=True)
    services.ranking_create(annotator=annotator, group=group, order=order)
    ratings = list(selectors.new_ratings(project=ranking_project))
    config = training_services.pg_config_for(project=ranking_project, overrides={"annotator_norm": False})
    batch = training_services.training_batch_build(project=ranking_project, ratings=ratings, config=config)
    ids = sorted(order)
    reward_of = dict(zip(ids, batch.rewards))
    for cid in ids:  # +1 per implied win, -1 per implied loss, averaged: a plain loop over the pairs
        outcomes = [1.0 if w == cid else -1.0 for w, l in RankedPair.objects.values_list("winner_id", "loser_id") if cid in (w, l)]
        assert reward_of[cid] == pytest.approx(sum(outcomes) / len(outcomes))
    assert [reward_of[cid] for cid in order] == pytest.approx([1.0, 1 / 3, -1 / 3, -1.0])
    assert len(set(batch.group_ids)) == 1  # one prompt: one leave-one-out group


def test_exports_hold_every_implied_pair_and_kto_labels_by_half(ranking_project, annotator, make_completion):
    group = make_rank_group(ranking_project, make_completion, k=3, texts=["worst", "best", "middle"])
    by_text = dict(group.members.values_list("text", "pk"))
    services.ranking_create(annotator=annotator, group=group, order=[by_text["best"], by_text["middle"], by_text["worst"]])
    text, n = exports.ratings_jsonl(project=ranking_project, fmt="pairs")
    pairs = {(row["chosen"], row["rejected"]) for row in map(json.loads, text.splitlines())}
    assert n == 3 and pairs == {("best", "middle"), ("best", "worst"), ("middle", "worst")}
    text, n = exports.ratings_jsonl(project=ranking_project, fmt="kto")
    labels = {row["completion"]: row["label"] for row in map(json.loads, text.splitlines())}
    assert labels == {"best": True, "worst": False}  # the middle of three is neutral


def test_the_reward_model_reads_a_ranking_as_its_implied_comparisons(ranking_project, annotator, make_completion):
    from webapp.rewards import selectors as reward_selectors
    from webapp.rewards import services as reward_services

    group = make_rank_group(ranking_project, make_completion, k=3)
    order = sorted(group.members.values_list("pk", flat=True))
    services.ranking_create(annotator=annotator, group=group, order=order)
    rows = reward_selectors.rating_rows(project=ranking_project)
    data = reward_services.judgments_build(project=ranking_project, rows=rows)
    everything = data["all"]
    ids = data["completion_ids"]
    pairs = {(ids[a], ids[b], float(t)) for a, b, t in zip(everything.pair_a.tolist(), everything.pair_b.tolist(), everything.pair_target)}
    assert pairs == {(order[0], order[1], 1.0), (order[0], order[2], 1.0), (order[1], order[2], 1.0)}
    assert len(everything.rating_index) == 0  # a place is not a level
    assert data["n_judgments"] == 3 == reward_selectors.judgment_count(project=ranking_project)


def test_agreement_on_rankings_is_ordinal_over_each_outputs_place(ranking_project, make_user, make_completion):
    ranking_project.ratings_per_item = 2
    ranking_project.save()
    prompts = list(ranking_project.prompts.all())
    for i in range(3):
        make_rank_group(ranking_project, make_completion, prompt=prompts[i])
    for person in (make_user("r1"), make_user("r2")):
        for _ in range(3):
            _lease_and_rank(ranking_project, person, sorted)
    [ranked] = [a for a in figures.agreement(project=ranking_project) if a.kind.startswith("Ranking")]
    assert ranked.level == "ordinal" and ranked.items == 9 and ranked.judgments == 18
    assert ranked.alpha == pytest.approx(1.0)
    rows = {f.username: f.judgments for f in figures.annotator_figures(project=ranking_project)}
    assert rows == {"r1": 3, "r2": 3}  # a ranking counts once


def test_the_page_ranks_by_places_and_refuses_two_outputs_in_one_place(client, ranking_project, annotator, make_completion):
    from webapp.policies.services import membership_add

    membership_add(project=ranking_project, user=annotator)
    client.force_login(annotator)
    make_rank_group(ranking_project, make_completion)
    make_rank_group(ranking_project, make_completion, prompt=ranking_project.prompts.all()[1])
    htmx = {"HTTP_HX_REQUEST": "true"}
    page = client.post(f"/p/{ranking_project.slug}/annotate/next/", **htmx).content.decode()
    assert page.count('class="rank-pick"') == 3 and "<kbd>Enter</kbd> submit ranking" in page
    lease = selectors.lease_held(project=ranking_project, annotator=annotator)
    shown = [m.pk for m in lease.completion.ranked_members]
    url = f"/p/{ranking_project.slug}/annotate/{lease.completion_id}/rate/"
    bad = client.post(url, {f"rank_{cid}": 1 for cid in shown}, **htmx).content.decode()
    assert "different place from 1 to 3" in bad and not Ranking.objects.exists()
    places = {f"rank_{cid}": place for cid, place in zip(shown, [2, 3, 1])}
    client.post(url, {**places, "shown": ",".join(map(str, shown))}, **htmx)
    ranking = Ranking.objects.get()
    assert ranking.order == [shown[2], shown[0], shown[1]] and ranking.shown_order == shown
    history = client.get(f"/p/{ranking_project.slug}/annotate/history/").content.decode()
    assert "ranked best to worst" in history and "#1" in history


def test_undo_on_the_page_states_the_order_undone_and_fills_its_places_in_again(
        client, ranking_project, annotator, make_completion):
    import re

    from webapp.policies.services import membership_add

    membership_add(project=ranking_project, user=annotator)
    client.force_login(annotator)
    make_rank_group(ranking_project, make_completion)
    htmx = {"HTTP_HX_REQUEST": "true"}
    client.post(f"/p/{ranking_project.slug}/annotate/next/", **htmx)
    lease = selectors.lease_held(project=ranking_project, annotator=annotator)
    shown = [m.pk for m in lease.completion.ranked_members]
    places = dict(zip(shown, [2, 3, 1]))  # output 3 best, then output 1, then output 2
    client.post(f"/p/{ranking_project.slug}/annotate/{lease.completion_id}/rate/",
                {**{f"rank_{cid}": p for cid, p in places.items()}, "shown": ",".join(map(str, shown)),
                 "comment": "three reads best"}, **htmx)
    assert Ranking.objects.get().order == [shown[2], shown[0], shown[1]]

    page = client.post(f"/p/{ranking_project.slug}/annotate/undo/", **htmx).content.decode()

    assert not Ranking.objects.exists()
    again = [m.pk for m in selectors.lease_held(project=ranking_project, annotator=annotator).completion.ranked_members]
    number = {cid: n for n, cid in enumerate(again, 1)}  # the outputs' numbers on the card shown now
    undone = " &gt; ".join(str(number[cid]) for cid in [shown[2], shown[0], shown[1]])
    assert f"Undone: you had ranked <strong>{undone}</strong>" in page and "a ranking" not in page
    selected = re.findall(r'<select name="rank_(\d+)"[^>]*>.*?<option value="(\d)" selected>', page, re.S)
    assert {int(cid): int(p) for cid, p in selected} == places
    assert "three reads best</textarea>" in page


def test_a_ranking_item_is_leased_ranked_and_undone_through_the_api(ranking_project, annotator, make_completion, api_for):
    group = make_rank_group(ranking_project, make_completion)
    client = api_for(annotator)
    item = client.post("/projects/rk/queue/next").json()["item"]
    assert item["mode"] == "ranking" and item["completion_id"] == group.anchor_id
    shown = [c["id"] for c in item["ranked"]]
    assert sorted(shown) == sorted(group.members.values_list("pk", flat=True))
    assert client.post(f"/projects/rk/queue/{group.anchor_id}/rank", {"order": shown[:2]}).status_code == 409
    not_an_anchor = next(cid for cid in shown if cid != group.anchor_id)
    assert client.post(f"/projects/rk/queue/{not_an_anchor}/rank", {"order": shown}).status_code == 404
    response = client.post(f"/projects/rk/queue/{group.anchor_id}/rank", {"order": shown[::-1]})
    assert response.status_code == 201 and response.json()["order"] == shown[::-1]
    assert RankedPair.objects.count() == 3
    undone = client.post("/projects/rk/queue/undo").json()
    assert undone["undone"]["order"] == shown[::-1] and undone["item"]["completion_id"] == group.anchor_id
    assert not Ranking.objects.exists()
