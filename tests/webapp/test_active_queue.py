"""The active queue (issue 16, item 5): most uncertain first, a uniform share, why each item was served."""

import math
import random

import pytest

from webapp.annotation import selectors, services
from webapp.annotation.models import ChosenBy, Completion, Lease


def _scored(project, make_completion, uncertainties):
    items = []
    for i, u in enumerate(uncertainties):
        c = make_completion(project, text=f"item {i}")
        Completion.objects.filter(pk=c.pk).update(rm_score=0.0, rm_uncertainty=u)
        items.append(c)
    return items


def _active(project, share):
    project.active_queue = True
    project.active_uniform_share = share
    project.save(update_fields=["active_queue", "active_uniform_share"])


def test_active_choice_serves_the_most_uncertain_item(project, annotator, make_completion):
    items = _scored(project, make_completion, [0.1, 0.9, 0.4, None])
    _active(project, 0.0)

    lease = services.lease_next(project=project, annotator=annotator)

    assert lease.completion_id == items[1].pk
    assert Lease.objects.get(pk=lease.pk).chosen_by == ChosenBy.ACTIVE


def test_active_order_is_by_ensemble_uncertainty_with_unscored_items_last(project, annotator, make_completion):
    items = _scored(project, make_completion, [0.2, None, 0.7, 0.5])

    order = selectors.queue_candidate_ids(project=project, annotator=annotator, order="active")

    assert order == [items[2].pk, items[3].pk, items[0].pk, items[1].pk]


def test_successive_annotators_get_decreasing_uncertainty(project, make_user, make_completion):
    items = _scored(project, make_completion, [0.3, 0.8, 0.5])
    _active(project, 0.0)

    served = [services.lease_next(project=project, annotator=make_user(f"a{i}")).completion_id for i in range(3)]

    assert served == [items[1].pk, items[2].pk, items[0].pk]


def test_without_any_score_the_active_queue_serves_queue_order_and_says_so(project, annotator, make_completion):
    first = make_completion(project, text="oldest")
    make_completion(project, text="newer")
    _active(project, 0.0)

    lease = services.lease_next(project=project, annotator=annotator)

    assert lease.completion_id == first.pk
    assert Lease.objects.get(pk=lease.pk).chosen_by == ChosenBy.FIFO


def test_the_queue_off_records_queue_order(project, annotator, make_completion):
    _scored(project, make_completion, [0.1, 0.9])

    lease = services.lease_next(project=project, annotator=annotator)

    assert Lease.objects.get(pk=lease.pk).chosen_by == ChosenBy.FIFO
    assert lease.completion.text == "item 0"  # the uncertainty is ignored while the active queue is off


def test_the_uniform_share_holds_over_many_draws(project, monkeypatch):
    # Seeded: 2,000 draws at share 0.25. Binomial sd = sqrt(2000 * 0.25 * 0.75) = 19.4, so a 4-sd band is +-78.
    monkeypatch.setattr(services, "queue_rng", __import__("random").Random(16))
    _active(project, 0.25)
    draws = [services.queue_order_draw(project=project) for _ in range(2000)]
    uniform = draws.count(ChosenBy.UNIFORM)
    assert abs(uniform - 500) < 4 * math.sqrt(2000 * 0.25 * 0.75)
    assert set(draws) == {ChosenBy.UNIFORM, ChosenBy.ACTIVE}


@pytest.mark.parametrize("share,expected", [(0.0, {ChosenBy.ACTIVE}), (1.0, {ChosenBy.UNIFORM})])
def test_the_uniform_share_ends_are_exact(project, share, expected):
    _active(project, share)
    assert {services.queue_order_draw(project=project) for _ in range(200)} == expected


def test_served_leases_record_the_uniform_share(project, make_user, make_completion, monkeypatch):
    # Through lease_next: 60 annotators, each served one item; the recorded reasons follow the seeded draws.
    monkeypatch.setattr(services, "queue_rng", __import__("random").Random(3))
    _scored(project, make_completion, [i / 100 for i in range(60)])
    _active(project, 0.5)
    expected_rng = __import__("random").Random(3)
    expected = [ChosenBy.UNIFORM if expected_rng.random() < 0.5 else ChosenBy.ACTIVE for _ in range(60)]

    for i in range(60):
        services.lease_next(project=project, annotator=make_user(f"u{i}"))

    assert list(Lease.objects.order_by("id").values_list("chosen_by", flat=True)) == expected


def test_uniform_draws_reach_every_item(project, annotator, make_completion):
    items = _scored(project, make_completion, [0.9, 0.1, 0.1, 0.1])
    seen = set()
    for _ in range(200):
        seen.add(selectors.queue_candidate_ids(project=project, annotator=annotator, order="uniform", limit=1)[0])
    assert seen == {c.pk for c in items}


def test_uniform_draws_repeat_for_a_seeded_generator(project, annotator, make_completion):
    _scored(project, make_completion, [0.5] * 6)

    def draws(seed):
        rng = random.Random(seed)
        return [selectors.queue_candidate_ids(project=project, annotator=annotator, order="uniform", limit=3, rng=rng) for _ in range(5)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert all(len(set(d)) == 3 for d in draws(7))


def test_an_unknown_order_is_refused(project, annotator):
    with pytest.raises(ValueError, match="order"):
        selectors.queue_candidate_ids(project=project, annotator=annotator, order="loudest")


def test_rate_skip_and_undo_still_work_with_the_active_queue(project, annotator, make_completion):
    items = _scored(project, make_completion, [0.1, 0.9, 0.5])
    _active(project, 0.0)

    first = services.lease_next(project=project, annotator=annotator)
    assert first.completion_id == items[1].pk
    services.rating_create(annotator=annotator, completion=first.completion, score=5)
    assert Lease.objects.get(pk=first.pk).fulfilled

    second = services.lease_next(project=project, annotator=annotator)
    assert second.completion_id == items[2].pk
    services.item_skip(annotator=annotator, completion=second.completion)

    third = services.lease_next(project=project, annotator=annotator)
    assert third.completion_id == items[0].pk

    # u undoes the last action: first the skip (its item comes back), then the rating.
    undone_skip = services.judgment_undo(project=project, annotator=annotator)
    assert undone_skip.skip.completion_id == items[2].pk and undone_skip.lease.completion_id == items[2].pk
    assert not Lease.objects.filter(completion_id=items[0].pk, annotator=annotator).exists()

    undone = services.judgment_undo(project=project, annotator=annotator)
    assert undone.lease.completion_id == items[1].pk
    assert Lease.objects.get(completion_id=items[1].pk, annotator=annotator).chosen_by == ChosenBy.ACTIVE
