"""Steering runs: cancel, overrides, the promotion guard, held-out evaluation, comparisons, audit.

Real pgcore on the tiny model, real weights on disk, the real database.
"""

import threading
from pathlib import Path

import pytest
import torch

from webapp.annotation import services as annotation_services
from webapp.annotation.importers import PromptRow
from webapp.annotation.models import Completion, Rating
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, ModelVersion
from webapp.training import evaluation
from webapp.training import services as training_services
from webapp.training.models import TrainingRun, VersionSample


HANG_GUARD_S = 600  # how long a threaded test waits on a condition before it calls the wait a hang


def rate_pool(project, users, score_for, seed=1):
    annotation_services.completion_pool_refill(project=project, seed=seed)
    for completion in Completion.objects.filter(project=project):
        for user in users:
            Rating.objects.create(completion=completion, annotator=user, score=score_for(completion))


def add_held_out(project, n):
    annotation_services.prompts_create(
        project=project,
        rows=[PromptRow(line=i + 1, text=f"Held-out review {i}: the plot", held_out=True) for i in range(n)],
    )


def collapsed_copy(src: Path, out: Path) -> Path:
    """The tiny model with one embedding dimension blown up so that EOS wins every step: every output is empty."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight  # (V, C), tied to the output layer
        embeddings[:, 0] = 100.0
        embeddings[tokenizer.eos_token_id, 0] = 200.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --- Metrics ---------------------------------------------------------------------


def test_distinct_2_counts_unique_bigrams_over_all_outputs():
    assert evaluation.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)
    assert evaluation.distinct_n([[1, 2], [1, 2], [1, 2]], 2) == pytest.approx(1 / 3)
    assert evaluation.distinct_n([[7], []], 2) == 0.0


def test_identical_fraction_is_the_largest_group_of_equal_outputs():
    assert evaluation.identical_fraction(["a", "b", "a", "a"]) == 0.75
    assert evaluation.identical_fraction(["a", "b", "c"]) == 0.0  # no two alike
    assert evaluation.identical_fraction(["only one"]) == 0.0


def test_k3_kl_is_zero_for_the_same_policy_and_positive_otherwise():
    assert evaluation.mean_k3_kl([[-1.0, -2.0]], [[-1.0, -2.0]]) == pytest.approx(0.0)
    assert evaluation.mean_k3_kl([[-0.1]], [[-3.0]]) > 1.0


# --- Cancel ----------------------------------------------------------------------


def test_cancelling_a_queued_run_stops_it_at_once_and_is_audited(project, annotator, make_completion, staff_user):
    Rating.objects.create(completion=make_completion(project), annotator=annotator, score=4)
    run = training_services.training_run_create(project=project, trigger="manual", user=staff_user)
    run = training_services.training_run_cancel(run=run, user=staff_user)
    assert run.status == "cancelled" and run.finished_at and run.cancel_requested_by == staff_user
    assert training_services.training_run_execute(run_id=run.pk) is None  # the worker leaves it alone
    assert list(AuditEvent.objects.values_list("action", "actor__username")) == [
        ("cancel", "boss"),
        ("train", "boss"),
    ]
    with pytest.raises(ApplicationError, match="already finished"):
        training_services.training_run_cancel(run=run, user=staff_user)


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_run_stops_it_writes_no_version_and_the_next_run_works(
    project, make_user, models_dir, monkeypatch
):
    """Staff cancel while the update is under way (after its first optimiser step): the run stops at
    the next minibatch boundary. The worker's own cancel check is the real one; it only waits, at its
    first call after a step, until the test has cancelled, so no timing decides where the run is when
    the cancel lands (at load 9 a fixed wait once cancelled it before the update had begun)."""
    from django.db import connection

    from webapp.training import pipeline

    project.pg_config = {**project.pg_config, "epochs": 20, "minibatch_size": 1}
    project.save(update_fields=["pg_config"])
    rate_pool(project, [make_user("a")], lambda c: 5 if c.pk % 2 else 1)
    served_before = project.served_version_id
    run = training_services.training_run_create(project=project, trigger="manual")
    errors = []
    stepped, cancelled = threading.Event(), threading.Event()
    real_cancel_requested = pipeline.cancel_requested

    def cancel_requested_after_the_test_cancels(run_id):
        if not stepped.is_set() and TrainingRun.objects.get(pk=run_id).progress_step >= 1:
            stepped.set()
            cancelled.wait(HANG_GUARD_S)
        return real_cancel_requested(run_id)

    monkeypatch.setattr(pipeline, "cancel_requested", cancel_requested_after_the_test_cancels)

    def work():
        try:
            training_services.training_run_execute(run_id=run.pk)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            cancelled.set()  # never leave the worker waiting, whatever happened
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert stepped.wait(HANG_GUARD_S), f"the update never made a step: {TrainingRun.objects.get(pk=run.pk).log}"
        training_services.training_run_cancel(run=TrainingRun.objects.get(pk=run.pk), user=make_user("boss", staff=True))
    finally:
        cancelled.set()
    worker.join(HANG_GUARD_S)  # a bound against a hang only: the worker ends once it has seen the cancel
    assert not worker.is_alive() and not errors

    run.refresh_from_db()
    assert run.status == "cancelled", run.log
    assert run.progress_step == 1 < run.progress_total  # it stopped at the first minibatch boundary after the cancel
    assert "cancelled" in run.log and run.result_version is None
    assert ModelVersion.objects.filter(project=project).count() == 1
    assert not list(Path(models_dir).glob(f"{project.slug}/*"))  # not even a half-written folder
    project.refresh_from_db()
    assert project.served_version_id == served_before
    # The cancelled run used nothing up: the next run trains on the same ratings and succeeds.
    project.pg_config = {**project.pg_config, "epochs": 1, "minibatch_size": 4}
    project.save(update_fields=["pg_config"])
    again = training_services.training_run_create(project=project, trigger="manual")
    again = training_services.training_run_execute(run_id=again.pk)
    assert again.status == "succeeded", again.error
    assert again.result_version.number == 1 and again.ratings.count() == run.ratings.count()


# --- Overrides, progress, curve --------------------------------------------------


def test_overrides_apply_to_the_run_and_progress_and_curve_are_recorded(project, make_user):
    rate_pool(project, [make_user("a")], lambda c: 5 if c.pk % 2 else 2)
    run = training_services.training_run_create(
        project=project, trigger="manual", overrides={"lr": 5e-4, "kl_coef": 0.2, "epochs": 2}
    )
    assert (run.config["lr"], run.config["kl_coef"], run.config["epochs"]) == (5e-4, 0.2, 2)
    run = training_services.training_run_execute(run_id=run.pk)
    assert run.status == "succeeded", run.error
    assert run.progress_epochs == run.progress_epoch == 2
    assert len(run.curve) == run.progress_total == 2 * 1  # 4 ratings, minibatch 4, two epochs
    assert [p["epoch"] for p in run.curve] == [1, 2]
    assert all({"losses/pg_loss", "objective/kl"} <= set(p) for p in run.curve)


# --- Promotion guard -------------------------------------------------------------


def test_a_healthy_version_is_evaluated_on_held_out_prompts_and_served(project, make_user):
    add_held_out(project, 3)
    rate_pool(project, [make_user("a")], lambda c: 4 if c.pk % 2 else 2)
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded" and run.promoted and not run.held_back_reason, run.log
    version = run.result_version
    assert VersionSample.objects.filter(version=version).count() == 4  # every held-out prompt, once
    assert VersionSample.objects.filter(version=version.parent).count() == 4  # the parent was measured too
    assert version.kl_to_base is not None and 0 <= version.kl_to_base < project.guard_max_kl
    assert version.parent.kl_to_base == pytest.approx(0.0, abs=1e-6)  # the base against itself
    assert 0 < version.distinct2 <= 1
    project.refresh_from_db()
    assert project.served_version == version


def test_a_collapsed_version_is_kept_but_not_served_and_the_run_says_why(project, make_user, tmp_path, client):
    add_held_out(project, 5)
    collapsed = collapsed_copy(Path(project.base_model_path), tmp_path / "collapsed")
    v1 = policy_services.version_register(
        project=project,
        parent=project.served_version,
        kind=ModelVersion.Kind.FULL,
        weights_path=collapsed,
        sha256="",
        ratings_used=0,
        metrics={},
    )
    policy_services.version_promote(version=v1, refill_pool=False)
    project.pg_config = {**project.pg_config, "use_lora": False, "lr": 1e-6}
    project.save(update_fields=["pg_config"])
    rate_pool(project, [make_user("a")], lambda c: 5)

    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )

    assert run.status == "succeeded", run.error
    version = run.result_version
    assert version.number == 2 and version.kind == "full"
    texts = set(VersionSample.objects.filter(version=version).values_list("text", flat=True))
    assert texts == {""}  # the same output for every held-out prompt
    assert version.identical_fraction == 1.0
    assert not run.promoted
    assert "same text" in run.held_back_reason and "KL to the base" in run.held_back_reason
    assert version.held_back_reason == run.held_back_reason
    project.refresh_from_db()
    assert project.served_version == v1  # unchanged
    assert "NOT served" in run.log

    staff = make_user("boss", staff=True)
    client.force_login(staff)
    detail = client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert "was kept but not served" in detail and "same text" in detail
    versions = client.get(f"/staff/p/{project.slug}/versions/").content.decode()
    assert "held back" in versions and "same text" in versions


def test_guard_thresholds_are_per_project_settings(project, make_user):
    add_held_out(project, 2)
    policy_services.project_training_settings_update(project=project, guard_max_kl=0.0, user=make_user("boss", staff=True))
    rate_pool(project, [make_user("a")], lambda c: 5 if c.pk % 2 else 1)
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded" and not run.promoted
    assert "above the limit of 0" in run.held_back_reason
    assert AuditEvent.objects.filter(action="settings", detail__guard_max_kl=[0.5, 0.0]).exists()


def test_settings_out_of_range_are_refused_with_the_field_named(project):
    with pytest.raises(ApplicationError, match="guard_max_identical_fraction"):
        policy_services.project_training_settings_update(project=project, guard_max_identical_fraction=1.5)
    project.refresh_from_db()
    assert project.guard_max_identical_fraction == 0.5


# --- Promote, compare, audit -----------------------------------------------------


def test_promoting_an_older_version_rolls_back_in_one_step_and_is_audited(project, make_user):
    rate_pool(project, [make_user("a")], lambda c: 4)
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    boss = make_user("boss", staff=True)
    v0 = ModelVersion.objects.get(project=project, number=0)
    policy_services.version_promote(version=v0, user=boss)
    project.refresh_from_db()
    assert project.served_version == v0
    event = AuditEvent.objects.filter(action="promote", actor=boss).get()
    assert event.target == "v0" and event.detail == {"previous": run.result_version.number}


def test_comparison_samples_are_generated_once_and_reused(project):
    add_held_out(project, 2)
    v0 = project.served_version
    assert evaluation.version_samples_ensure(version=v0) == 3
    first = list(VersionSample.objects.filter(version=v0).values_list("pk", "text"))
    assert evaluation.version_samples_ensure(version=v0) == 0  # cached: nothing regenerated
    assert list(VersionSample.objects.filter(version=v0).values_list("pk", "text")) == first


def test_the_compare_task_writes_samples_and_metrics_once(project):
    from webapp.training import tasks

    add_held_out(project, 2)
    v0 = project.served_version
    assert tasks.version_samples_ensure(v0.pk) == 3
    assert tasks.version_samples_ensure(v0.pk) == 0  # delivered twice: nothing more
    v0.refresh_from_db()
    assert v0.evaluated_at and v0.distinct2 > 0 and v0.kl_to_base == pytest.approx(0.0, abs=1e-6)
    assert tasks.version_samples_ensure(10**6) == 0  # a version that is gone


def test_a_run_that_fails_after_writing_its_version_leaves_it_unserved_with_the_reason(project, make_user):
    add_held_out(project, 1)
    rate_pool(project, [make_user("a")], lambda c: 5 if c.pk % 2 else 1)
    # A completion length sampling refuses: the evaluation, after the weights are written, fails.
    type(project).objects.filter(pk=project.pk).update(max_new_tokens=0)
    served_before = project.served_version_id
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "failed" and run.error
    project.refresh_from_db()
    assert project.served_version_id == served_before
    assert "the run failed after writing it" in run.result_version.held_back_reason


def test_a_full_versions_reference_logprobs_come_from_the_base_loaded_once(project, tmp_path, monkeypatch):
    """The KL-to-base of a full (non-LoRA) version scores its samples under the base model: the same
    logprobs as a fresh load of the base, with the base loaded once per process, not once per batch."""
    import pgcore.policy
    from webapp.policies import runtime

    collapsed = collapsed_copy(Path(project.base_model_path), tmp_path / "collapsed")
    v1 = policy_services.version_register(
        project=project, parent=project.served_version, kind=ModelVersion.Kind.FULL,
        weights_path=collapsed, sha256="", ratings_used=0, metrics={},
    )
    policy = runtime.policy_load(v1)
    tok = policy.tokenizer
    prompt_ids = [tok.encode("The film was"), tok.encode("A slow start, then")]
    completion_ids = [tok.encode(" a delight to watch."), tok.encode(" it soars.")]

    loads = []
    real_load = pgcore.policy.load_policy
    monkeypatch.setattr(pgcore.policy, "load_policy", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    runtime._frozen.clear()
    first = evaluation._reference_logprobs(policy, v1, prompt_ids, completion_ids)
    second = evaluation._reference_logprobs(policy, v1, prompt_ids, completion_ids)
    assert len(loads) == 1 and first == second

    base = real_load(Path(project.base_model_path), trainable=False)
    base.model.eval()
    expected = evaluation._token_logprobs(base.model, tok.pad_token_id, prompt_ids, completion_ids)
    own = evaluation._token_logprobs(policy.model, tok.pad_token_id, prompt_ids, completion_ids)
    assert [len(r) for r in first] == [len(c) for c in completion_ids]
    for got, want, mine in zip(first, expected, own):
        assert got == pytest.approx(want, abs=1e-5)
        assert got != pytest.approx(mine, abs=1e-3)  # the collapsed version's own logprobs differ
