"""The learning benchmark's simulated queue: how long annotators wait for a card."""

import pytest

from bench.learning import QueueModel, parse_args, queue_aggregate


def summary(queue: QueueModel) -> dict:
    return queue.summary(pool_target=16, low_water=32, mean_delays_s=[20.0, 30.0])


def test_a_wait_lasts_from_the_empty_queue_until_the_card_and_counts_once():
    queue = QueueModel()
    queue.wait_begins(0, 10.0)
    queue.wait_begins(1, 12.0)
    queue.wait_ends(0, 14.5)
    queue.wait_ends(0, 20.0)  # no open wait: nothing recorded
    queue.close(15.0)  # annotator 1 is still waiting when the run ends
    out = summary(queue)
    assert out["waits"] == 2
    assert out["total_wait_s"] == pytest.approx(7.5)
    assert out["max_wait_s"] == pytest.approx(4.5)
    assert out["low_water"] == 16  # the app caps the low-water mark at the pool size


def test_waits_that_begin_before_a_newly_served_versions_first_batch_are_counted_apart():
    queue = QueueModel()
    queue.wait_begins(0, 1.0)
    queue.wait_ends(0, 2.0)
    queue.version_served()
    queue.wait_begins(1, 5.0)
    queue.batch_landed()
    queue.wait_ends(1, 9.0)
    out = summary(queue)
    assert (out["waits"], out["waits_after_serve"], out["wait_s_after_serve"]) == (2, 1, 4.0)


def test_older_cards_are_counted_only_between_a_serve_and_the_new_versions_first_batch():
    queue = QueueModel()
    queue.card_given(older=True)  # a drain project's older item in steady state: not a handover
    queue.version_served()
    queue.card_given(older=True)
    queue.card_given(older=True)
    queue.card_given(older=False)
    queue.batch_landed()
    queue.card_given(older=True)
    assert summary(queue)["older_cards_after_serve"] == 2
    assert queue_aggregate([summary(queue), summary(QueueModel())])["older_cards_after_serve"] == 2


def test_a_batch_lasts_its_cpu_seconds_per_thread_or_its_wall_seconds():
    cpu = QueueModel(clock="cpu", threads=2)
    cpu.batch_measured(cpu_s=8.0, wall_s=30.0)
    wall = QueueModel(clock="wall", threads=2)
    wall.batch_measured(cpu_s=8.0, wall_s=30.0)
    assert (cpu.batch_s, wall.batch_s) == (4.0, 30.0)
    assert summary(cpu)["refill_batch_wall_s_mean"] == 30.0
    with pytest.raises(ValueError, match="clock"):
        QueueModel(clock="virtual")


def test_a_variants_queue_sums_waits_over_seeds_and_keeps_the_longest():
    a, b = QueueModel(clock="cpu"), QueueModel(clock="cpu")
    a.wait_begins(0, 0.0)
    a.wait_ends(0, 3.0)
    b.wait_begins(0, 0.0)
    b.wait_ends(0, 5.0)
    b.batch_measured(cpu_s=2.0, wall_s=2.0)
    out = queue_aggregate([summary(a), summary(b)])
    assert (out["waits"], out["total_wait_s"], out["max_wait_s"], out["refill_batch_s_max"]) == (2, 8.0, 5.0, 2.0)
    assert out["per_seed"]["max_wait_s"] == [3.0, 5.0]


def test_the_low_water_mark_and_refill_clock_are_arguments():
    args = parse_args(["--tiny", "--low-water", "4", "--refill-clock", "wall"])
    assert (args.low_water, args.refill_clock) == (4, "wall")
    assert parse_args(["--tiny"]).low_water is None


def test_the_fixed_clock_gives_every_batch_the_same_duration_whatever_it_cost():
    fixed = QueueModel(clock="fixed", batch_seconds=2.5)
    assert fixed.batch_s == 2.5  # the first refill batch too, before any was measured
    fixed.batch_measured(cpu_s=8.0, wall_s=30.0)
    assert fixed.batch_s == 2.5
    with pytest.raises(ValueError, match="batch_seconds"):
        QueueModel(clock="fixed", batch_seconds=0)


def test_faster_raters_divide_every_annotators_mean_delay():
    from bench.learning import annotator_team

    assert [a.mean_delay_s for a in annotator_team(5, delay_scale=0.25)] == [5.0, 7.5, 11.25, 60.0, 5.0]
    assert parse_args(["--tiny", "--delay-scale", "0.5"]).delay_scale == 0.5
    assert parse_args(["--tiny"]).delay_scale == 1.0
    with pytest.raises(SystemExit):
        parse_args(["--tiny", "--delay-scale", "0"])
    with pytest.raises(ValueError, match="delay_scale"):
        annotator_team(4, delay_scale=-1.0)
