"""The SQL statements of the annotator's two hot requests, pinned exactly.

``bench/annotate_load.py`` (50 annotators) spends its server CPU on two requests:
*next item* (``POST annotate/next/``) and *submit* (``POST annotate/<id>/rate/``,
answered with the next card). Each statement costs CPU in the web worker and in the
database, so a feature that adds one to either request must change the number here,
on purpose, rather than slow every rating silently.

The throttled upkeep (expired-lease reclaim, pool-refill nudge) is held off during the
measured requests so the counts do not depend on the clock. Sessions come from the
database here (no shared cache in tests): one statement that a deployment with
``REWARDLOOP_CACHE_URL`` reads from the cache instead.
"""

import re

import pytest
from django.urls import reverse

from webapp.annotation import services
from webapp.annotation.models import Lease, Rating

HTMX = {"HTTP_HX_REQUEST": "true"}
ITEM = re.compile(r'data-completion="(\d+)"')


def url(name, project, *args):
    return reverse(f"annotation:{name}", args=[project.slug, *args])


@pytest.fixture
def warm_client(client, annotator, project, make_completion, monkeypatch):
    """An annotator's client after one *next item* (which ran the throttled upkeep), with the
    upkeep then held off; 30 items in the queue, one of them leased."""
    for _ in range(30):
        make_completion(project)
    client.force_login(annotator)
    client.post(url("next", project), **HTMX)
    monkeypatch.setattr(services, "RECLAIM_EVERY_S", 1e9)
    monkeypatch.setattr(services, "REFILL_NUDGE_EVERY_S", 1e9)
    return client


# The progress line is a statement of its own: read with the card's lease it cost PostgreSQL more
# planning and execution than the two apart (bench/annotate_hot_queries.py).
# session, user, membership with its project, the held lease with its card, the progress line
NEXT_HELD = 5
# session, user, membership with its project, held lease? (none), candidates, lease insert,
# the new lease with its card, the progress line
NEXT_NEW = 8
# session, user, membership with its project, the item; the rating's savepoint, lease claimed,
# rating insert, n_ratings, savepoint released; the next lease: held? (none), candidates,
# insert, its card; the progress line; the outer block's savepoint release (a commit outside tests)
SUBMIT = 16


def test_next_item_answering_the_held_lease_takes_five_statements(warm_client, project, django_assert_num_queries):
    held = Lease.objects.get()
    with django_assert_num_queries(NEXT_HELD):
        body = warm_client.post(url("next", project), **HTMX).content.decode()
    assert int(ITEM.search(body).group(1)) == held.completion_id


def test_next_item_leasing_a_new_item_takes_eight_statements(warm_client, project, django_assert_num_queries):
    Lease.objects.all().delete()  # the lease given back: the next request leases afresh
    with django_assert_num_queries(NEXT_NEW):
        body = warm_client.post(url("next", project), **HTMX).content.decode()
    lease = Lease.objects.get()
    assert int(ITEM.search(body).group(1)) == lease.completion_id
    assert 'id="count-queue">29<' in body


def test_a_submit_answered_with_the_next_card_takes_sixteen_statements(warm_client, project, django_assert_num_queries):
    item = Lease.objects.get().completion_id
    with django_assert_num_queries(SUBMIT):
        body = warm_client.post(url("rate", project, item), {"score": "4"}, **HTMX).content.decode()
    assert 'class="flash error"' not in body
    assert Rating.objects.get().completion_id == item and Rating.objects.get().score == 4
    next_item = int(ITEM.search(body).group(1))
    assert next_item != item and Lease.objects.get(fulfilled=False).completion_id == next_item
    assert 'id="count-today">1<' in body and 'id="count-queue">28<' in body


def test_a_submit_of_an_item_of_another_project_is_not_found(warm_client, project, project_factory, tiny_model_dir, make_completion):
    other = make_completion(project_factory("other", tiny_model_dir))
    answer = warm_client.post(url("rate", project, other.pk), {"score": "4"}, **HTMX)
    assert answer.status_code == 404 and not Rating.objects.exists()
