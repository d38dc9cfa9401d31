"""The simulated annotators of bench/learning.py: scale, bias, noise, clipping and delay."""

import random
import statistics

import pytest

from bench.simulated_annotators import (
    DEFAULT_TEAM,
    SimulatedAnnotator,
    compound_to_likert,
    default_team,
    ideal_rating,
)


@pytest.mark.parametrize(
    "compound, likert",
    [(-1.0, 1), (-0.76, 1), (-0.74, 2), (-0.25, 3), (0.0, 3), (0.24, 3), (0.25, 4), (0.74, 4), (0.75, 5), (1.0, 5)],
)
def test_compound_sentiment_maps_linearly_onto_likert_and_rounds_half_up(compound, likert):
    assert compound_to_likert(compound) == likert


def test_warm_text_rates_high_hostile_text_low_and_plain_text_in_the_middle():
    assert ideal_rating("I love this wonderful film, it is great and so much fun!") == 5
    assert ideal_rating("A terrible, awful, boring mess. I hate it.") == 1
    assert ideal_rating("The film runs ninety minutes.") == 3


def test_a_lenient_annotator_without_noise_rates_exactly_one_point_higher():
    lenient = SimulatedAnnotator("l", bias=+1, noise_prob=0.0)
    rng = random.Random(0)
    assert [lenient.rate_ideal(i, rng) for i in (1, 2, 3, 4)] == [2, 3, 4, 5]


def test_bias_is_clipped_to_the_likert_range():
    rng = random.Random(0)
    assert SimulatedAnnotator("l", bias=+1).rate_ideal(5, rng) == 5
    assert SimulatedAnnotator("h", bias=-1).rate_ideal(1, rng) == 1
    assert SimulatedAnnotator("h", bias=-1).rate_ideal(2, rng) == 1


def test_noise_moves_a_rating_one_point_up_or_down_at_the_stated_rate():
    annotator = SimulatedAnnotator("n", noise_prob=0.3)
    rng = random.Random(1)
    ratings = [annotator.rate_ideal(3, rng) for _ in range(20_000)]
    assert set(ratings) == {2, 3, 4}
    moved = sum(r != 3 for r in ratings) / len(ratings)
    assert moved == pytest.approx(0.3, abs=0.015)
    assert ratings.count(2) == pytest.approx(ratings.count(4), rel=0.1)


def test_noise_at_the_top_of_the_scale_is_clipped_not_wrapped():
    annotator = SimulatedAnnotator("n", bias=+1, noise_prob=1.0)
    rng = random.Random(2)
    assert set(annotator.rate_ideal(5, rng) for _ in range(200)) == {5}
    assert set(annotator.rate_ideal(4, rng) for _ in range(200)) == {4, 5}


def test_delays_are_positive_and_average_the_annotators_mean_delay():
    slow = SimulatedAnnotator("s", mean_delay_s=240.0)
    rng = random.Random(3)
    delays = [slow.delay(rng) for _ in range(20_000)]
    assert min(delays) > 0
    assert statistics.fmean(delays) == pytest.approx(240.0, rel=0.03)


def test_the_same_seed_gives_the_same_ratings_and_delays():
    annotator = DEFAULT_TEAM[3]
    a, b = random.Random(7), random.Random(7)
    assert [(annotator.rate("a fine film", a), annotator.delay(a)) for _ in range(50)] == [
        (annotator.rate("a fine film", b), annotator.delay(b)) for _ in range(50)
    ]


def test_default_team_has_a_lenient_a_harsh_and_a_slow_annotator():
    team = default_team(4)
    assert sorted(a.bias for a in team) == [-1, 0, 0, 1]
    assert max(a.mean_delay_s for a in team) >= 4 * min(a.mean_delay_s for a in team)
    bigger = default_team(6)
    assert len({a.name for a in bigger}) == 6


def test_out_of_range_settings_are_refused():
    with pytest.raises(ValueError, match="noise_prob"):
        SimulatedAnnotator("x", noise_prob=1.5)
    with pytest.raises(ValueError, match="mean_delay_s"):
        SimulatedAnnotator("x", mean_delay_s=0)
    with pytest.raises(ValueError):
        default_team(0)
