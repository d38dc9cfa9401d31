"""Two annotators asking for the next item at the same moment, 50 times, each thread on its own connection.

Runs against whatever database the suite uses (SQLite file in WAL mode, or
PostgreSQL); the guarantee comes from the unique (completion, slot) lease
constraint, not from timing.
"""

import threading
from collections import Counter, defaultdict

import pytest
from django.db import connection

from webapp.annotation import services
from webapp.annotation.models import Lease, Rating

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 50


def ask_and_rate_concurrently(project, annotators, rounds=ROUNDS):
    """Each annotator's thread, in lockstep with the others: ask for the next item, then rate it.

    Returns {annotator id: [completion id leased in round 0, 1, ...]} (None when nothing was leased).
    """
    barrier = threading.Barrier(len(annotators), timeout=60)
    leased = defaultdict(list)
    errors = []

    def work(annotator):
        try:
            for _ in range(rounds):
                barrier.wait()
                lease = services.lease_next(project=project, annotator=annotator)
                leased[annotator.pk].append(lease.completion_id if lease else None)
                barrier.wait()  # both have asked before either rates
                if lease:
                    services.rating_create(annotator=annotator, completion=lease.completion, score=3)
        except Exception as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(a,)) for a in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return leased


def test_two_annotators_asking_at_once_never_get_the_same_item_with_overlap_one(project, make_user, make_completion):
    for i in range(2 * ROUNDS):
        make_completion(project, text=f"item {i}")
    a, b = make_user("a"), make_user("b")

    leased = ask_and_rate_concurrently(project, [a, b])

    for round_a, round_b in zip(leased[a.pk], leased[b.pk]):
        assert round_a is not None and round_b is not None and round_a != round_b
    assert not set(leased[a.pk]) & set(leased[b.pk])
    assert len(set(leased[a.pk]) | set(leased[b.pk])) == 2 * ROUNDS
    per_item = Counter(Rating.objects.values_list("completion_id", flat=True))
    assert len(per_item) == 2 * ROUNDS and set(per_item.values()) == {1}


def test_with_overlap_two_each_item_goes_to_exactly_two_people(project, make_user, make_completion):
    project.ratings_per_item = 2
    project.save()
    items = {make_completion(project, text=f"item {i}").pk for i in range(ROUNDS)}
    a, b, c = make_user("a"), make_user("b"), make_user("c")

    leased = ask_and_rate_concurrently(project, [a, b])

    assert sorted(leased[a.pk]) == sorted(leased[b.pk]) == sorted(items)
    raters = defaultdict(set)
    for completion_id, annotator_id in Rating.objects.values_list("completion_id", "annotator_id"):
        raters[completion_id].add(annotator_id)
    assert all(raters[i] == {a.pk, b.pk} for i in items)
    slots = defaultdict(set)
    for completion_id, slot in Lease.objects.values_list("completion_id", "slot"):
        slots[completion_id].add(slot)
    assert all(slots[i] == {0, 1} for i in items)
    assert services.lease_next(project=project, annotator=c) is None  # every item has its two people

