"""Two generation workers refilling one project's pool at the same moment.

Each refill runs in its own thread on its own database connection, against
whatever database the suite uses (SQLite file in WAL mode, or PostgreSQL).
Sampling is the real pgcore sampler on the tiny model, slowed by half a
second per batch so both refills are sampling at once, as two workers on a
real model are: both read the pool before either writes.
"""

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

import pgcore.rollout
from webapp.annotation import selectors, services
from webapp.annotation.models import Completion, PoolClaim

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def slow_sampler(monkeypatch):
    real = pgcore.rollout.generate_stream

    def generate_stream(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(pgcore.rollout, "generate_stream", generate_stream)


def refill_concurrently(project, n_workers=2):
    """Start ``n_workers`` refills of ``project`` together; returns what each created."""
    barrier = threading.Barrier(n_workers, timeout=60)
    created, errors = [], []

    def work(seed):
        try:
            barrier.wait()
            created.append(services.completion_pool_refill(project=type(project).objects.get(pk=project.pk), seed=seed))
        except Exception as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return created


@pytest.mark.parametrize(("per_prompt", "target"), [(2, 12), (1, 6), (4, 8)])
def test_two_refills_at_once_stay_within_one_group_of_the_target_and_never_share_a_prompt(
    project, slow_sampler, per_prompt, target
):
    project.completions_per_prompt = per_prompt
    project.pool_target = target
    project.save()

    created = refill_concurrently(project)

    project.refresh_from_db()
    assert sum(created) == Completion.objects.count()
    assert target <= selectors.pool_size(project=project) < target + per_prompt
    per_prompt_counts = Counter(
        Completion.objects.filter(model_version=project.served_version).values_list("prompt_id", flat=True)
    )
    assert set(per_prompt_counts.values()) == {per_prompt}  # no prompt sampled twice for this version
    assert not PoolClaim.objects.exists()


def test_refills_at_once_on_a_pairwise_project_store_whole_pairs_within_one_pair_of_the_target(project, slow_sampler):
    project.rating_mode = "pairwise"
    project.pool_target = 8
    project.save()

    refill_concurrently(project)

    project.refresh_from_db()
    assert 8 <= selectors.pool_size(project=project) < 10
    assert Counter(Completion.objects.values_list("prompt_id", flat=True)).most_common(1)[0][1] == 2
    assert all(hasattr(c, "pair_as_a") or hasattr(c, "pair_as_b") for c in Completion.objects.all())


def test_a_prompt_claimed_by_a_live_worker_counts_toward_the_pool_and_is_not_sampled(project):
    prompt = project.prompts.filter(held_out=False).first()
    PoolClaim.objects.create(
        project=project,
        prompt=prompt,
        model_version=project.served_version,
        n_completions=1,
        expires_at=timezone.now() + timedelta(minutes=5),
    )

    assert services.completion_pool_refill(project=project, seed=0) == project.pool_target - 1
    assert not Completion.objects.filter(prompt=prompt).exists()


def test_claims_of_a_dead_worker_stop_counting_once_expired(project):
    for prompt in project.prompts.filter(held_out=False)[:4]:
        PoolClaim.objects.create(
            project=project,
            prompt=prompt,
            model_version=project.served_version,
            n_completions=1,
            expires_at=timezone.now() - timedelta(seconds=1),
        )

    assert services.completion_pool_refill(project=project, seed=0) == project.pool_target
    assert not PoolClaim.objects.exists()


def test_a_refill_whose_sampling_fails_releases_its_claims(project, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("sampler crashed")

    monkeypatch.setattr(pgcore.rollout, "generate_stream", broken)
    with pytest.raises(RuntimeError, match="sampler crashed"):
        services.completion_pool_refill(project=project, seed=0)
    assert not PoolClaim.objects.exists()
    assert not Completion.objects.exists()


def test_a_refill_whose_sampler_crashes_midway_keeps_the_groups_that_ended_and_releases_the_rest(project, monkeypatch):
    real = pgcore.rollout.generate_stream

    def crashes_after_three(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 3:
                raise RuntimeError("sampler crashed")
            yield item

    monkeypatch.setattr(pgcore.rollout, "generate_stream", crashes_after_three)
    with pytest.raises(RuntimeError, match="sampler crashed"):
        services.completion_pool_refill(project=project, seed=0)
    assert not PoolClaim.objects.exists()
    assert Completion.objects.count() == 3  # each ended group was stored as it ended: no work lost


def test_a_refill_samples_its_whole_deficit_in_one_stream_storing_each_completion_as_it_ends(project, monkeypatch):
    """Prompts join the running batch as rows free up; items are rateable while the rest is sampled."""
    project.pool_target = 3 * services.GENERATION_BATCH + 1
    project.save(update_fields=["pool_target"])
    real = pgcore.rollout.generate_stream
    streams, stored_when_yielded = [], []

    def watched(*args, **kwargs):
        streams.append(len(args[1]))  # prompts the stream started with
        for n, item in enumerate(real(*args, **kwargs)):
            stored_when_yielded.append((n, Completion.objects.count()))
            yield item

    monkeypatch.setattr(pgcore.rollout, "generate_stream", watched)
    assert services.completion_pool_refill(project=project, seed=0) == project.pool_target
    assert streams == [6]  # one stream, started with every prompt (6 < one batch); the rest came in as rows freed
    assert stored_when_yielded == [(n, n) for n in range(project.pool_target)]  # the n before it, stored already
    assert not PoolClaim.objects.exists()
