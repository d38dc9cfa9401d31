"""With the broker down, no request whose write committed answers 500, and nothing is left stuck.

The broker is made unreachable by pointing the Celery app at a closed port
(redis://127.0.0.1:1/0) with no publish retries; the database is the real one
(SQLite or PostgreSQL). Once the broker is back (the configured one: the
filesystem queue or Redis), the schedule re-sends what never went out.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.webapp.arena_helpers import add_version
from tests.webapp.broker_helpers import queued_messages
from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion, Rating
from webapp.celery import app
from webapp.policies.models import ModelVersion
from webapp.training import services as training_services
from webapp.training.models import TrainingRun

HTMX = {"HTTP_HX_REQUEST": "true"}
CLOSED_PORT = "redis://127.0.0.1:1/0"


def _reset_producers() -> None:
    """Forget the app's cached pools so the next send connects to ``broker_url`` as configured now.

    (kombu keeps one pool per broker URL process-wide; they are dropped here, never closed.)
    """
    app.amqp._producer_pool = None
    app._pool = None


@pytest.fixture
def broker_down():
    """The Celery app publishes to a closed port, failing at once; restored afterwards."""
    # broker_write_url, not broker_url: a CELERY_BROKER_URL in the environment outranks broker_url.
    keys = (
        "broker_write_url",
        "broker_transport",
        "broker_transport_options",
        "broker_connection_timeout",
        "task_publish_retry_policy",
    )
    saved = {key: app.conf[key] for key in keys}
    _reset_producers()
    app.conf.update(
        broker_write_url=CLOSED_PORT,
        broker_transport=None,  # the filesystem leg names its transport class; Redis has its own
        broker_transport_options={},
        broker_connection_timeout=0.5,
        task_publish_retry_policy={"max_retries": 0},
    )

    def restore():
        _reset_producers()
        app.conf.update(saved)

    yield restore
    restore()


@pytest.fixture
def rated(project, annotator, make_completion):
    for i in range(4):
        Rating.objects.create(completion=make_completion(project, text=f"c{i}"), annotator=annotator, score=1 + i)
    return project


@pytest.fixture
def annotator_client(client, annotator):
    client.force_login(annotator)
    annotation_services._last_nudge.clear()
    return client


@pytest.mark.django_db(transaction=True)
def test_train_now_with_the_broker_down_queues_the_run_and_says_the_schedule_will_send_it(
    staff_client, rated, broker_down
):
    response = staff_client.post(f"/staff/p/{rated.slug}/train/", {}, follow=True)

    assert response.status_code == 200
    run = TrainingRun.objects.get(project=rated)
    assert run.status == "queued" and run.dispatched_at is None
    page = response.content.decode()
    assert "broker) is unreachable" in page and "the schedule sends it when the broker is back" in page
    assert 'id="not-dispatched"' in page  # the run page says so too, not "waiting for the worker"
    assert "not sent to a worker yet" in run.log
    runs_page = staff_client.get(f"/staff/p/{rated.slug}/runs/").content.decode()
    assert "not sent to a worker yet: the broker was unreachable" in runs_page


@pytest.mark.django_db(transaction=True)
def test_the_schedule_sends_a_run_the_broker_never_got_once_the_broker_is_back(rated, broker_down):
    run = training_services.training_run_create(project=rated, trigger="manual")
    assert run.dispatched_at is None
    TrainingRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    assert training_services.training_schedule_tick() == []  # broker still down: no error, the run waits
    assert TrainingRun.objects.get(pk=run.pk).dispatched_at is None

    broker_down()  # the broker is back
    queued_messages("training")
    training_services.training_schedule_tick()

    run.refresh_from_db()
    assert run.status == "queued" and run.dispatched_at is not None
    assert ("webapp.training.tasks.training_run_execute", [run.pk]) in queued_messages("training")
    assert "sent to the training queue by the schedule" in run.log


@pytest.mark.django_db(transaction=True)
def test_a_run_the_broker_never_got_can_be_cancelled_and_frees_the_project(rated, broker_down, staff_user):
    run = training_services.training_run_create(project=rated, trigger="manual")
    assert training_services.training_run_cancel(run=run, user=staff_user).status == "cancelled"
    again = training_services.training_run_create(project=rated, trigger="manual")
    assert again.status == "queued"


@pytest.mark.django_db(transaction=True)
def test_a_rating_with_the_broker_down_is_stored_and_the_next_card_is_served(
    annotator_client, annotator, project, make_completion, broker_down
):
    completion = make_completion(project)  # the pool is below half its target: the page nudges a refill
    lease = annotation_services.lease_next(project=project, annotator=annotator)

    response = annotator_client.post(
        f"/p/{project.slug}/annotate/{lease.completion_id}/rate/", {"score": "4"}, **HTMX
    )

    assert response.status_code == 200
    assert Rating.objects.filter(completion=completion, annotator=annotator, score=4).exists()
    assert "The model is writing new outputs" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_waiting_cards_poll_with_the_broker_down_answers_the_waiting_card(annotator_client, project, broker_down):
    assert not Completion.objects.filter(project=project).exists()
    page = annotator_client.get(f"/p/{project.slug}/annotate/")
    annotation_services._last_nudge.clear()
    poll = annotator_client.post(f"/p/{project.slug}/annotate/next/", **HTMX)  # the waiting card polls by POST
    assert page.status_code == poll.status_code == 200
    assert "The model is writing new outputs" in poll.content.decode()


@pytest.mark.django_db(transaction=True)
def test_compare_with_the_broker_down_says_nothing_was_queued(staff_client, project, broker_down):
    add_version(project, 1, prompts=[])
    response = staff_client.post(f"/staff/p/{project.slug}/compare/start/", {"a": "0", "b": "1"}, follow=True)
    assert response.status_code == 200
    assert "the task queue (broker) is unreachable" in response.content.decode()
    assert "Nothing was queued; press Compare again" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_run_that_finishes_with_the_broker_down_still_succeeds_and_serves_its_version(project, make_user, broker_down):
    annotation_services.completion_pool_refill(project=project, seed=1)
    user = make_user("a")
    for completion in Completion.objects.filter(project=project):
        Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 2)
    run = training_services.training_run_create(project=project, trigger="manual")

    run = training_services.training_run_execute(run_id=run.pk)  # the post-promotion pool refill cannot be sent

    assert run.status == "succeeded", f"{run.error}\n{run.log}"
    project.refresh_from_db()
    assert project.served_version == run.result_version
    assert ModelVersion.objects.get(pk=run.result_version_id).held_back_reason == ""
