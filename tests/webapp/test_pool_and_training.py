"""Generation and training services on the tiny random model (real pgcore, real weights on disk)."""

from collections import Counter

import pytest
import torch

from webapp.annotation import selectors
from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion, Rating
from webapp.errors import ApplicationError
from webapp.policies.models import ModelVersion
from webapp.policies.runtime import version_dir
from webapp.training import services as training_services
from webapp.training.models import TrainingRun


def rate_all(project, users, score_for):
    for completion in Completion.objects.filter(project=project):
        for user in users:
            Rating.objects.create(completion=completion, annotator=user, score=score_for(completion))


def test_pool_refill_samples_the_served_version_up_to_the_target(project):
    created = annotation_services.completion_pool_refill(project=project, seed=1)
    assert created == project.pool_target == Completion.objects.count()
    for completion in Completion.objects.all():
        assert completion.model_version_id == project.served_version_id
        assert not completion.prompt.held_out
        assert 1 <= len(completion.token_ids) <= project.max_new_tokens
        assert len(completion.behaviour_logprobs) == len(completion.token_ids)
        assert all(lp <= 0.0 for lp in completion.behaviour_logprobs)
    assert annotation_services.completion_pool_refill(project=project) == 0


def test_pool_refill_samples_each_prompt_as_a_group_of_completions_per_prompt(project):
    """Groups of ``completions_per_prompt`` completions of one prompt, so the leave-one-out baseline has peers."""
    project.pool_target = 8
    project.completions_per_prompt = 4
    project.save()
    assert annotation_services.completion_pool_refill(project=project, seed=3) == 8
    per_prompt = Counter(Completion.objects.values_list("prompt_id", flat=True))
    assert sorted(per_prompt.values()) == [4, 4]
    texts = [c.text for c in Completion.objects.filter(prompt_id=next(iter(per_prompt)))]
    assert len(set(texts)) > 1  # four samples, not one sample stored four times


def test_completions_per_prompt_one_spreads_the_pool_over_prompts(project):
    assert project.completions_per_prompt == 1  # the default
    annotation_services.completion_pool_refill(project=project, seed=3)
    assert Completion.objects.values("prompt_id").distinct().count() == project.pool_target == 4


@pytest.mark.parametrize("value", [0, 9])
def test_completions_per_prompt_outside_1_to_8_is_refused(project, value):
    from django.core.exceptions import ValidationError

    project.completions_per_prompt = value
    with pytest.raises(ValidationError, match="completions_per_prompt"):
        project.full_clean()


def test_completions_of_one_prompt_share_a_group_and_get_leave_one_out_advantages(project, make_user):
    """The batch a run trains on groups a prompt's completions; pgcore's baseline then compares within the group."""
    from pgcore.advantages import leave_one_out
    from pgcore.config import PGConfig

    project.pool_target = 8
    project.completions_per_prompt = 4
    project.save()
    annotation_services.completion_pool_refill(project=project, seed=5)
    users = [make_user(f"a{i}") for i in range(2)]
    completions = list(Completion.objects.order_by("id"))
    for i, completion in enumerate(completions):
        for user in users:
            Rating.objects.create(completion=completion, annotator=user, score=1 + i % 5)
    batch = training_services.training_batch_build(
        project=project, ratings=list(Rating.objects.all()), config=PGConfig(annotator_norm=False)
    )
    assert sorted(Counter(batch.group_ids).values()) == [4, 4]
    rewards = torch.tensor(batch.rewards)
    advantages = leave_one_out(rewards, torch.tensor(batch.group_ids))
    for group in set(batch.group_ids):
        members = [i for i, g in enumerate(batch.group_ids) if g == group]
        assert abs(float(advantages[members].sum())) < 1e-6  # leave-one-out advantages of a group sum to 0
        i = members[0]
        peers = [rewards[j] for j in members[1:]]
        assert float(advantages[i]) == pytest.approx(float(rewards[i] - sum(peers) / len(peers)))


def test_stored_behaviour_logprobs_are_the_sampling_policys_own(project):
    """Recomputing the logprobs of the stored tokens under v0 gives the stored values."""
    from pgcore.rollout import default_device, sampling_dtype

    from webapp.policies.runtime import policy_load

    annotation_services.completion_pool_refill(project=project, seed=2)
    policy = policy_load(project.served_version)
    completion = Completion.objects.first()
    ids = torch.tensor([completion.prompt_token_ids + completion.token_ids])
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    recomputed = logprobs[len(completion.prompt_token_ids) - 1 :]
    stored = torch.tensor(completion.behaviour_logprobs)
    if sampling_dtype("auto", default_device()) == torch.float32:
        torch.testing.assert_close(recomputed, stored, atol=1e-4, rtol=1e-4)
    else:
        # bf16 sampling (where native): the logprobs of the bf16 distribution actually sampled,
        # a small measured distance from the fp32 ones; the trainer corrects it (PGConfig.tis_cap).
        d = recomputed - stored
        assert float((torch.expm1(d) - d).mean()) < 0.05 and float(d.abs().max()) < 1.0


def test_only_one_active_run_per_project(project, annotator, make_completion):
    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=4)
    training_services.training_run_create(project=project, trigger="manual")
    with pytest.raises(ApplicationError, match="already queued or running"):
        training_services.training_run_create(project=project, trigger="manual")
    assert TrainingRun.objects.count() == 1


def test_bad_overrides_are_refused_with_the_field_named(project, annotator, make_completion):
    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=4)
    with pytest.raises(ApplicationError, match="kl_coef"):
        training_services.training_run_create(project=project, trigger="manual", overrides={"kl_coef": -1})
    assert not TrainingRun.objects.exists()


def test_a_run_trains_writes_a_checked_version_and_serves_it(project, make_user):
    annotation_services.completion_pool_refill(project=project, seed=3)
    rate_all(project, [make_user("a"), make_user("b")], lambda c: 5 if c.pk % 2 else 1)
    run = training_services.training_run_create(project=project, trigger="manual")
    run = training_services.training_run_execute(run_id=run.pk)

    assert run.status == "succeeded", run.error
    project.refresh_from_db()
    version = project.served_version
    assert version == run.result_version and version.number == 1 and version.parent.number == 0
    assert version.kind == ModelVersion.Kind.LORA and len(version.sha256) == 64
    assert version_dir(version).is_dir()
    assert version.ratings_used == 8 == run.ratings.count()
    for key in ("objective/mean_reward", "objective/kl", "losses/pg_loss"):
        assert key in run.metrics
    assert run.progress_step == run.progress_total > 0
    # Its ratings are used; nothing new to train on until more arrive.
    with pytest.raises(ApplicationError, match="no new ratings"):
        training_services.training_run_create(project=project, trigger="manual")
    # Running the same task again (redelivery) changes nothing.
    assert training_services.training_run_execute(run_id=run.pk) is None


@pytest.mark.parametrize("native", [True, False])
def test_a_run_says_when_the_cpu_makes_it_train_in_fp32(project, make_user, monkeypatch, native):
    from pgcore import precision

    monkeypatch.setattr(precision, "native_bf16_matmul", lambda: native)
    project.pg_config = {**project.pg_config, "bf16_autocast": True}
    project.save()
    annotation_services.completion_pool_refill(project=project, seed=3)
    rate_all(project, [make_user("a")], lambda c: 5 if c.pk % 2 else 1)
    run = training_services.training_run_create(project=project, trigger="manual")
    run = training_services.training_run_execute(run_id=run.pk)
    assert run.status == "succeeded", run.error
    assert run.metrics["train/bf16_autocast"] == float(native)
    assert ("no native bf16 matrix multiply: training in fp32" in run.log) is not native


def test_new_completions_come_from_the_new_version(project, make_user):
    annotation_services.completion_pool_refill(project=project, seed=4)
    rate_all(project, [make_user("a")], lambda c: 4)
    run = training_services.training_run_create(project=project, trigger="manual")
    training_services.training_run_execute(run_id=run.pk)
    project.refresh_from_db()
    assert selectors.pool_size(project=project) == 0  # the training worker sampled nothing for the pool
    assert annotation_services.completion_pool_refill(project=project, seed=5) == project.pool_target
    assert selectors.pool_size(project=project) == project.pool_target
    newest = Completion.objects.order_by("-id").first()
    assert newest.model_version.number == 1


def test_a_failed_run_keeps_the_served_version(project, make_user, settings):
    annotation_services.completion_pool_refill(project=project, seed=6)
    rate_all(project, [make_user("a")], lambda c: 3)
    # Corrupt the token ids of one rated completion: the forward pass must fail.
    Completion.objects.filter(pk=Completion.objects.first().pk).update(token_ids=[10**9])
    served_before = project.served_version_id
    run = training_services.training_run_create(project=project, trigger="manual")
    run = training_services.training_run_execute(run_id=run.pk)
    assert run.status == "failed" and run.error
    assert "failed" in run.log
    project.refresh_from_db()
    assert project.served_version_id == served_before
    assert ModelVersion.objects.filter(project=project).count() == 1
    # The project is free for the next run.
    Completion.objects.filter(token_ids=[10**9]).delete()
    assert training_services.training_run_create(project=project, trigger="manual").status == "queued"


def test_a_tampered_version_is_refused_on_load(project, make_user):
    from pgcore.policy import ChecksumError

    from webapp.policies.runtime import policy_load

    annotation_services.completion_pool_refill(project=project, seed=7)
    rate_all(project, [make_user("a")], lambda c: 2)
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    version = run.result_version
    weights = next(version_dir(version).glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError):
        policy_load(version)


def test_schedule_starts_a_run_only_with_enough_new_ratings(project, annotator, make_completion):
    for _ in range(project.min_new_ratings - 1):
        Rating.objects.create(completion=make_completion(project), annotator=annotator, score=3)
    assert training_services.training_schedule_tick() == []
    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=3)
    started = training_services.training_schedule_tick()
    assert [run.trigger for run in started] == ["schedule"]
    assert training_services.training_schedule_tick() == []  # one active run at a time


def test_a_run_whose_worker_vanished_is_marked_failed_by_the_schedule(project, annotator, make_completion):
    from datetime import timedelta

    from django.utils import timezone

    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=3)
    run = training_services.training_run_create(project=project, trigger="manual")
    stale = timezone.now() - training_services.STALE_RUN_AFTER - timedelta(seconds=1)
    TrainingRun.objects.filter(pk=run.pk).update(status="running", started_at=stale, heartbeat_at=stale)
    training_services.training_schedule_tick()
    run.refresh_from_db()
    assert run.status == "failed" and "stopped reporting" in run.error


def test_beat_schedule_entries_are_created_once_and_keep_admin_changes(db, settings):
    from django_celery_beat.models import PeriodicTask

    training_services.schedule_ensure()
    task = PeriodicTask.objects.get(task=training_services.TRAIN_TASK_NAME)
    assert task.interval.every == settings.REWARDLOOP_TRAIN_INTERVAL_S
    task.interval.every = 42
    task.interval.save()
    training_services.schedule_ensure()
    assert PeriodicTask.objects.get(task=training_services.TRAIN_TASK_NAME).interval.every == 42
    training_services.schedule_ensure(train_interval_s=7)
    assert PeriodicTask.objects.get(task=training_services.TRAIN_TASK_NAME).interval.every == 7


def test_a_project_with_the_critic_baseline_trains_it_across_runs(project, make_user):
    """PGConfig(baseline="critic") from the project's settings: each version carries its critic, the next run starts from it."""
    from pgcore.critic import CRITIC_FILE, Critic

    project.pg_config = {**project.pg_config, "baseline": "critic"}
    project.save(update_fields=["pg_config"])
    user = make_user("a")
    seen = []
    for seed in (7, 8):
        project.refresh_from_db()
        annotation_services.completion_pool_refill(project=project, seed=seed)
        for completion in Completion.objects.filter(project=project, ratings__isnull=True):
            Rating.objects.create(completion=completion, annotator=user, score=5 if completion.pk % 2 else 2)
        run = training_services.training_run_create(project=project, trigger="manual")
        run = training_services.training_run_execute(run_id=run.pk)
        assert run.status == "succeeded", run.error
        critic_file = version_dir(run.result_version) / CRITIC_FILE
        assert critic_file.exists()
        seen.append((run.metrics, Critic.load(critic_file).n_seen))
    (first, n_first), (second, n_second) = seen
    assert first["critic/value_mean"] == 0.0  # the base version has no critic: V = 0
    assert second["critic/value_mean"] != 0.0  # the second run's baseline is the first run's critic
    assert n_second > n_first  # 0.9 * (first run's ratings) + the second run's
