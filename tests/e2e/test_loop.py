"""The whole loop through real Celery worker and beat processes.

ratings are created → beat's schedule starts a training run → the training
worker writes and serves v1 → the generation worker fills the pool from v1.
"""

import pytest

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion
from webapp.training.models import STEP_ORDER, TrainingRun, TrainingStep
from webapp.training.services import schedule_ensure

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]



def test_ratings_train_a_new_version_that_then_writes_the_pool(project, make_user, celery_processes):
    schedule_ensure(train_interval_s=2, pool_interval_s=2)
    worker_log = celery_processes.start(
        "worker", "worker", "-Q", "generation,training", "-c", "1", "--purge", "--loglevel", "INFO", "-n", "e2e@%h"
    )
    celery_processes.wait_for_log(worker_log, "ready.")
    celery_processes.start("beat", "beat", "--loglevel", "INFO")

    # The pool fills from v0 on beat's refill.
    celery_processes.wait_until(
        lambda: Completion.objects.filter(project=project).count() >= project.pool_target, 120, "the pool to fill from v0"
    )

    annotators = [make_user("a1"), make_user("a2")]
    rated = 0
    while rated < project.min_new_ratings:
        for annotator in annotators:
            lease = annotation_services.lease_next(project=project, annotator=annotator)
            if lease and rated < project.min_new_ratings:
                annotation_services.rating_create(annotator=annotator, completion=lease.completion, score=5 - rated % 5)
                rated += 1

    run = celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(project=project, status__in=["succeeded", "failed"]).first(),
        120, "a scheduled training run to finish",
    )
    assert run.status == "succeeded", f"{run.error}\n{run.log}"
    assert run.trigger == "schedule"
    # Each step ran once, as its own task, through the broker.
    steps = list(TrainingStep.objects.filter(run=run).order_by("position"))
    assert [(s.name, s.status, s.attempts) for s in steps] == [(name, "done", 1) for name in STEP_ORDER]
    gaps = [round((b.started_at - a.finished_at).total_seconds(), 3) for a, b in zip(steps, steps[1:])]
    print(f"step seconds: {[(s.name, round(s.duration_s, 2)) for s in steps]}; between steps: {gaps}")
    project.refresh_from_db()
    assert project.served_version == run.result_version and project.served_version.number == 1

    first_from_v1 = celery_processes.wait_until(
        lambda: Completion.objects.filter(project=project, model_version=run.result_version).first(),
        120, "a completion from v1",
    )
    assert len(first_from_v1.behaviour_logprobs) == len(first_from_v1.token_ids) > 0
