import pytest
import torch
from torch.testing import assert_close

from pgcore.advantages import EMABaseline, batch_mean_baseline, leave_one_out, whiten
from pgcore.rewards import pairwise_to_scores


def _leave_one_out_by_loop(rewards, groups):
    out = []
    for i, (r, g) in enumerate(zip(rewards, groups)):
        others = [rj for j, (rj, gj) in enumerate(zip(rewards, groups)) if gj == g and j != i]
        if not others:
            others = [rj for j, rj in enumerate(rewards) if j != i]
        baseline = sum(others) / len(others) if others else 0.0
        out.append(r - baseline)
    return torch.tensor(out)


@pytest.mark.parametrize(
    "rewards, groups",
    [
        ([1.0, -1.0, 0.5, 0.0, 0.25, -0.5, 1.0], [0, 0, 0, 1, 1, 7, 3]),
        ([0.5, 0.5, 0.5], [4, 4, 4]),
        ([0.3, -0.2], [1, 2]),
        ([0.7], [0]),
    ],
)
def test_leave_one_out_equals_a_plain_loop(rewards, groups):
    got = leave_one_out(torch.tensor(rewards), torch.tensor(groups))
    assert_close(got, _leave_one_out_by_loop(rewards, groups))


@pytest.mark.parametrize("choice", ["a", "b", "tie", "both_bad"])
def test_leave_one_out_with_two_samples_equals_the_pairwise_signal(choice):
    score_a, score_b = pairwise_to_scores(choice)
    advantages = leave_one_out(torch.tensor([score_a, score_b]), torch.tensor([0, 0]))
    assert_close(advantages, torch.tensor([score_a - score_b, score_b - score_a]))
    # The winner is pushed up and the loser down by the same amount; a tie or both bad cancel.
    assert torch.sign(advantages[0]) == torch.sign(torch.tensor(score_a - score_b))


def test_one_sample_per_prompt_falls_back_to_the_rest_of_the_batch():
    advantages = leave_one_out(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0, 1, 2]))
    assert_close(advantages, torch.tensor([1.5, 0.0, -1.5]))


def test_a_batch_of_one_keeps_its_reward_as_advantage():
    assert_close(leave_one_out(torch.tensor([-0.5]), torch.tensor([3])), torch.tensor([-0.5]))


def test_leave_one_out_of_an_empty_batch_is_empty():
    assert leave_one_out(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_batch_mean_baseline_subtracts_the_mean():
    assert_close(batch_mean_baseline(torch.tensor([1.0, 0.0, 2.0])), torch.tensor([0.0, -1.0, 1.0]))
    assert_close(batch_mean_baseline(torch.tensor([4.0])), torch.tensor([0.0]))


def test_whiten_equals_a_plain_loop():
    x = [0.5, -1.0, 2.0, 0.0]
    mean = sum(x) / len(x)
    std = (sum((v - mean) ** 2 for v in x) / len(x)) ** 0.5
    assert_close(whiten(torch.tensor(x)), torch.tensor([(v - mean) / std for v in x]))


@pytest.mark.parametrize("advantages", [[0.7], [0.3, 0.3, 0.3], []])
def test_whiten_is_a_no_op_for_one_sample_or_zero_variance(advantages):
    x = torch.tensor(advantages)
    out = whiten(x)
    assert torch.isfinite(out).all()
    assert_close(out, x)


def test_ema_baseline_subtracts_earlier_batches_and_then_updates():
    baseline = EMABaseline(decay=0.5)
    assert_close(baseline(torch.tensor([1.0, 3.0])), torch.tensor([1.0, 3.0]))
    assert baseline.value == 1.0
    assert_close(baseline(torch.tensor([2.0])), torch.tensor([1.0]))
    assert baseline.value == 1.5


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="group_ids shape"):
        leave_one_out(torch.zeros(3), torch.zeros(2, dtype=torch.long))
