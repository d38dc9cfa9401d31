import math

import pytest
import torch
from torch.testing import assert_close

from pgcore.rewards import RatingRecord, likert_to_score, pairwise_to_scores, ratings_to_rewards, thumbs_to_score


def test_likert_maps_one_to_five_onto_minus_one_to_one():
    assert [likert_to_score(s) for s in (1, 2, 3, 4, 5)] == [-1.0, -0.5, 0.0, 0.5, 1.0]


@pytest.mark.parametrize("bad", [0, 6, float("nan"), "4", True])
def test_likert_outside_one_to_five_is_rejected(bad):
    with pytest.raises(ValueError, match=r"Likert rating must be a number in \[1, 5\]"):
        likert_to_score(bad)


def test_thumbs_map_to_plus_and_minus_one_and_reject_non_bools():
    assert (thumbs_to_score(True), thumbs_to_score(False)) == (1.0, -1.0)
    with pytest.raises(ValueError, match="thumbs"):
        thumbs_to_score(1)


def test_pairwise_choices_give_winner_plus_one_loser_minus_one():
    assert pairwise_to_scores("a") == (1.0, -1.0)
    assert pairwise_to_scores("b") == (-1.0, 1.0)
    assert pairwise_to_scores("tie") == (0.0, 0.0)
    assert pairwise_to_scores("both_bad") == (-1.0, -1.0)
    with pytest.raises(ValueError, match="pairwise choice"):
        pairwise_to_scores("c")


def _rewards_by_loop(ratings, n, shrinkage):
    """Plain-Python reference for ratings_to_rewards with annotator normalisation."""
    scores = [r.score for r in ratings]
    mean = sum(scores) / len(scores)
    var = sum((s - mean) ** 2 for s in scores) / len(scores)
    normalised = []
    for r in ratings:
        own = [q.score for q in ratings if q.annotator == r.annotator]
        n_a = len(own)
        mean_a = sum(own) / n_a
        var_a = sum((s - mean_a) ** 2 for s in own) / n_a
        shrunk_mean = (n_a * mean_a + shrinkage * mean) / (n_a + shrinkage)
        shrunk_std = math.sqrt((n_a * var_a + shrinkage * var) / (n_a + shrinkage))
        scale = math.sqrt(var) / shrunk_std if shrunk_std > 1e-6 else 1.0
        normalised.append(mean + scale * (r.score - shrunk_mean))
    out = []
    for i in range(n):
        mine = [x for r, x in zip(ratings, normalised) if r.completion_index == i]
        out.append(sum(mine) / len(mine))
    return torch.tensor(out)


RATINGS = [
    RatingRecord(0, "ann", 1.0),
    RatingRecord(1, "ann", 0.5),
    RatingRecord(2, "ann", -0.5),
    RatingRecord(0, "bob", 0.0),
    RatingRecord(1, "bob", -1.0),
    RatingRecord(3, "cy", 0.5),
    RatingRecord(2, "bob", -1.0),
]


@pytest.mark.parametrize("shrinkage", [0.0, 1.0, 5.0])
def test_normalised_rewards_equal_a_plain_loop(shrinkage):
    rewards = ratings_to_rewards(RATINGS, 4, shrinkage=shrinkage)
    assert_close(rewards, _rewards_by_loop(RATINGS, 4, shrinkage).float())


def test_without_annotator_norm_rewards_are_mean_raw_scores():
    rewards = ratings_to_rewards(RATINGS, 4, annotator_norm=False)
    assert_close(rewards, torch.tensor([0.5, -0.25, -0.75, 0.5]))


def test_a_harsh_and_a_lenient_annotator_agree_after_normalisation():
    lenient = [RatingRecord(i, "lenient", s) for i, s in enumerate([1.0, 0.5, 0.0, 0.5])]
    harsh = [RatingRecord(i + 4, "harsh", s - 0.5) for i, s in enumerate([1.0, 0.5, 0.0, 0.5])]
    rewards = ratings_to_rewards(lenient + harsh, 8, shrinkage=0.0)
    assert_close(rewards[:4], rewards[4:])


def test_shrinkage_keeps_an_annotator_with_one_rating_near_their_raw_score():
    ratings = [RatingRecord(i, "many", s) for i, s in enumerate([-1.0, -0.5, 0.0, 0.5, 1.0])]
    ratings.append(RatingRecord(5, "once", 1.0))
    unshrunk = ratings_to_rewards(ratings, 6, shrinkage=0.0)[5]
    shrunk = ratings_to_rewards(ratings, 6, shrinkage=5.0)[5]
    # Alone, one rating is its own mean: z-score 0 pulls it to the global mean (~0.17).
    assert abs(float(unshrunk) - 1 / 6) < 1e-5
    assert float(shrunk) > 0.8


def test_a_single_annotators_scores_are_unchanged():
    ratings = [RatingRecord(i, "solo", s) for i, s in enumerate([-1.0, 0.5, 0.0])]
    assert_close(ratings_to_rewards(ratings, 3), torch.tensor([-1.0, 0.5, 0.0]))


def test_all_equal_ratings_give_equal_finite_rewards():
    ratings = [RatingRecord(i % 3, f"a{i % 2}", 0.5) for i in range(6)]
    rewards = ratings_to_rewards(ratings, 3, shrinkage=0.0)
    assert torch.isfinite(rewards).all()
    assert_close(rewards, torch.full((3,), 0.5))


def test_several_ratings_of_one_completion_are_averaged():
    ratings = [RatingRecord(0, "a", 1.0), RatingRecord(0, "b", 0.0)]
    assert_close(ratings_to_rewards(ratings, 1, annotator_norm=False), torch.tensor([0.5]))


def test_a_nan_score_is_rejected_with_a_message_naming_the_rating():
    ratings = [RatingRecord(0, "a", 1.0), RatingRecord(1, "bob", float("nan"))]
    with pytest.raises(ValueError, match=r"rating 1 \(annotator 'bob', completion 1\) has non-finite score nan"):
        ratings_to_rewards(ratings, 2)


def test_an_unrated_completion_or_bad_index_is_rejected():
    with pytest.raises(ValueError, match=r"completions \[1\] have no rating"):
        ratings_to_rewards([RatingRecord(0, "a", 1.0)], 2)
    with pytest.raises(ValueError, match="outside"):
        ratings_to_rewards([RatingRecord(2, "a", 1.0)], 2)


def test_judgment_to_score_dispatches_on_the_kind_of_judgment():
    from pgcore.rewards import judgment_to_score

    assert judgment_to_score(score=5, thumbs_up=None, choice=None, is_a=True) == 1.0
    assert judgment_to_score(score=None, thumbs_up=False, choice=None, is_a=True) == -1.0
    assert judgment_to_score(score=None, thumbs_up=None, choice="b", is_a=True) == -1.0
    assert judgment_to_score(score=None, thumbs_up=None, choice="b", is_a=False) == 1.0
    with pytest.raises(ValueError, match="pairwise choice"):
        judgment_to_score(score=None, thumbs_up=None, choice=None, is_a=True)


def test_a_rank_scores_the_mean_of_its_implied_pairwise_outcomes_and_two_is_a_pairwise_choice():
    from pgcore.rewards import pairwise_to_scores, rank_to_score

    for k in range(2, 7):
        for rank in range(k):
            outcomes = [1.0] * (k - 1 - rank) + [-1.0] * rank  # a win over each below, a loss to each above
            assert rank_to_score(rank, k) == pytest.approx(sum(outcomes) / (k - 1))
        assert sum(rank_to_score(r, k) for r in range(k)) == pytest.approx(0.0)
    assert (rank_to_score(0, 2), rank_to_score(1, 2)) == pairwise_to_scores("a")


@pytest.mark.parametrize("rank,k", [(3, 3), (-1, 3), (0, 1), (True, 3), (0.5, 3)])
def test_a_rank_outside_its_ranking_is_refused(rank, k):
    from pgcore.rewards import rank_to_score

    with pytest.raises(ValueError):
        rank_to_score(rank, k)


def test_rating_weights_make_a_weighted_mean_per_completion_and_all_zero_falls_back_to_the_plain_mean():
    ratings = [
        RatingRecord(0, "good", 1.0, weight=1.0),
        RatingRecord(0, "careless", -1.0, weight=0.25),
        RatingRecord(1, "careless", -1.0, weight=0.0),
        RatingRecord(1, "other", 0.0, weight=0.0),
    ]
    rewards = ratings_to_rewards(ratings, 2, annotator_norm=False)
    assert_close(rewards, torch.tensor([(1.0 - 0.25) / 1.25, -0.5]))
    with pytest.raises(ValueError, match="weight"):
        ratings_to_rewards([RatingRecord(0, "a", 1.0, weight=-1.0)], 1, annotator_norm=False)
