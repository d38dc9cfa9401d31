"""Several machines, no shared folder: two generation workers and one training worker share only
PostgreSQL, Redis and an S3-compatible bucket (moto's standalone server, started by the test).

Each worker is its own Celery process with its own data folder, models folder and
artifact cache (``REWARDLOOP_CACHE_DIR``); the base model's folder is deleted after the
project is created (its upload to the bucket is all that remains), so any code path
that still needed a shared or local model folder fails here. The loop runs once:
completions from v0 -> ratings -> a training run (every step through the broker) ->
v1 promoted -> new completions by v1, sampled from weights each generation worker
fetched into its own cache and checked by hash (never by the training worker), whose first
batch retires v0's unrated leftovers.
"""

from __future__ import annotations

import shutil

import pytest
from django.db import connection

from webapp.annotation import selectors
from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion
from webapp.policies import artifacts
from webapp.policies.models import ModelVersion
from webapp.training import services as training_services
from webapp.training.models import STEP_ORDER, TrainingRun, TrainingStep

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@pytest.fixture
def postgres_and_redis():
    """Skip at once (before the bucket and the model are set up) off CI's PostgreSQL + Redis leg."""
    import os

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://…): separate worker processes share only the database")
    if not os.environ.get("CELERY_BROKER_URL", "").startswith("redis://"):
        pytest.skip("needs Redis (CELERY_BROKER_URL=redis://…): the filesystem broker is one machine's folder")


def _weights_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES))


def test_two_generation_workers_and_a_training_worker_close_the_loop_through_the_bucket_alone(
    postgres_and_redis, s3_storages, tiny_model_dir, project_factory, make_user, celery_processes, tmp_path
):
    # The web machine: the base model is uploaded when the project is created, then its folder is gone.
    base_on_web = tmp_path / "web-only-base"
    shutil.copytree(tiny_model_dir, base_on_web)
    project = project_factory("mm", base_on_web, title="Multi-machine", pool_low_water=4)
    shutil.rmtree(base_on_web)
    assert ModelVersion.objects.get(project=project, number=0).weights_path == "mm/base"

    machines = {}
    for name, queue in (("gen-1", "generation"), ("gen-2", "generation"), ("train", "training")):
        home = tmp_path / name
        machines[name] = home
        env = {
            "REWARDLOOP_DATA_DIR": str(home / "data"),
            "REWARDLOOP_MODELS_DIR": str(home / "models"),
            "REWARDLOOP_CACHE_DIR": str(home / "cache"),
        }
        log = celery_processes.start(
            name, "worker", "-Q", queue, "-c", "1", "--loglevel", "INFO", "-n", f"{name}@%h", env=env
        )
        celery_processes.wait_for_log(log, "ready.", timeout=180)

    # Completions from v0, sampled by the generation workers from the base they fetched.
    annotation_services.pool_refill_send(project_id=project.pk)
    celery_processes.wait_until(
        lambda: Completion.objects.filter(project=project).count() >= project.pool_target, 240, "the pool to fill from v0"
    )
    annotator = make_user("a1")
    for i in range(project.min_new_ratings):
        lease = celery_processes.wait_until(
            lambda: annotation_services.lease_next(project=project, annotator=annotator), 120, "an item to rate"
        )
        annotation_services.rating_create(annotator=annotator, completion=lease.completion, score=5 if i % 2 else 1)
    # Unrated v0 items are left when v1 is served: the queue offers them until v1's first batch retires them.
    annotation_services.pool_refill_send(project_id=project.pk)
    celery_processes.wait_until(
        lambda: selectors.pool_size(project=project) >= project.pool_target, 240, "the pool to fill again from v0"
    )

    run = training_services.training_run_create(project=project, trigger="manual")
    run = celery_processes.wait_until(
        lambda: TrainingRun.objects.filter(pk=run.pk, status__in=["succeeded", "failed", "cancelled"]).first(),
        300, "the training run on the training worker",
    )
    assert run.status == "succeeded" and run.promoted, f"{run.error}\n{run.log}\n{celery_processes.logs()}"
    steps = {s.name: s for s in TrainingStep.objects.filter(run=run)}
    assert [steps[n].status for n in STEP_ORDER] == ["done"] * len(STEP_ORDER)
    assert all(steps[n].worker.startswith("train@") for n in STEP_ORDER)
    v1 = run.result_version
    assert v1.number == 1 and v1.weights_path == f"mm/run-{run.pk}"  # a name in the bucket
    assert artifacts.manifest_read(v1.weights_path)["weights_sha256"] == v1.sha256

    # The training worker sampled nothing for the pool: after promotion the pool refills from v1, sampled
    # by generation workers from their own caches; the batch that stores v1's first items retires v0's
    # unrated leftovers, which the queue offered until then.
    assert "sampled ahead" not in run.log
    first = celery_processes.wait_until(
        lambda: Completion.objects.filter(project=project, model_version=v1).first(), 240, "a completion from v1"
    )
    leftovers = Completion.objects.filter(project=project, model_version__number=0, n_ratings=0, prompt__held_out=False)
    assert leftovers.exists() and not leftovers.filter(retired_at__isnull=True).exists()
    assert len(first.behaviour_logprobs) == len(first.token_ids) > 0

    for name, home in machines.items():
        assert _weights_under(home / "models") == [], f"{name} wrote weights outside its cache"
    caches = {name: _weights_under(home / "cache") for name, home in machines.items()}
    print(f"cached weights per machine: {caches}")
    # The training worker evaluates the policy it has just trained (kept in memory, matched by
    # sha256), so it needs v1 from the bucket only when another machine trained it; the base it
    # trained from came through its cache.
    assert any("mm__base@" in path for path in caches["train"]), caches
    gen_with_v1 = [n for n in ("gen-1", "gen-2") if any(f"run-{run.pk}@" in p for p in caches[n])]
    assert gen_with_v1, caches  # v1 was fetched by a generation worker into its own cache
    assert all(any("mm__base@" in p for p in caches[n]) for n in gen_with_v1)
