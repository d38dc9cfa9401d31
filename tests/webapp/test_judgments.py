"""One home per judgment kind: what a Likert score, a thumb or a pairwise choice means everywhere."""

import pytest

from webapp.annotation import judgments
from webapp.annotation.models import Choice


@pytest.mark.parametrize(
    ("kwargs", "reward"),
    [
        ({"score": 1}, -1.0),
        ({"score": 3}, 0.0),
        ({"score": 5}, 1.0),
        ({"thumbs_up": True}, 1.0),
        ({"thumbs_up": False}, -1.0),
        ({"choice": Choice.A, "is_completion_a": True}, 1.0),
        ({"choice": Choice.A, "is_completion_a": False}, -1.0),
        ({"choice": Choice.B, "is_completion_a": True}, -1.0),
        ({"choice": Choice.TIE, "is_completion_a": True}, 0.0),
        ({"choice": Choice.BOTH_BAD, "is_completion_a": False}, -1.0),
    ],
)
def test_each_judgment_kind_has_one_reward(kwargs, reward):
    full = {"score": None, "thumbs_up": None, "choice": None, "is_completion_a": True, **kwargs}
    assert judgments.reward_score(**full) == reward


def test_a_rating_with_no_value_has_no_reward():
    with pytest.raises(ValueError):
        judgments.reward_score(score=None, thumbs_up=None, choice=None, is_completion_a=True)


def test_kto_labels_leave_out_neutral_likert_and_ties():
    assert [judgments.kto_label(score=s, thumbs_up=None) for s in range(1, 6)] == [False, False, None, True, True]
    assert judgments.kto_label(score=None, thumbs_up=False) is False
    assert judgments.pairwise_kto_labels(Choice.A) == (True, False)
    assert judgments.pairwise_kto_labels(Choice.B) == (False, True)
    assert judgments.pairwise_kto_labels(Choice.BOTH_BAD) == (False, False)
    assert judgments.pairwise_kto_labels(Choice.TIE) is None


def test_only_a_decision_with_a_winner_is_a_preference_pair():
    assert [judgments.pairwise_winner(c) for c in Choice.values] == ["a", "b", None, None]


def test_a_single_rating_level_is_the_likert_score_or_the_thumbs_share():
    assert judgments.level(score=4, thumbs_up=None) == 4.0
    assert judgments.level(score=None, thumbs_up=True) == 1.0
    assert judgments.level(score=None, thumbs_up=False) == 0.0


def test_agreement_codes_one_nominal_code_per_choice():
    assert sorted(judgments.CHOICE_CODES) == sorted(Choice.values)
    assert len(set(judgments.CHOICE_CODES.values())) == len(Choice.values)
