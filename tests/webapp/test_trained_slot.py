"""The trained policy a worker keeps for the evaluate step is held no longer than that step can want it.

The update step keeps its freshly trained policy in memory, so that an evaluate step in the
same process need not load it again. Where the evaluate step runs on another worker, the
slot would otherwise hold a whole model until this worker's next update. Steps are run here
as a worker's task runs them; "another worker" is a step run after the slot was dropped.
"""

from __future__ import annotations

import gc
import shutil
import weakref

from tests.webapp.test_run_pipeline import WORKER_A, WORKER_B, rate_pool, run_steps, steps_of
from webapp.training import liveness, pipeline
from webapp.training import services as training_services
from webapp.training.models import STEP_ORDER, TrainingRun
from webapp.training.tasks import training_runs_reap


def _run(project, user):
    rate_pool(project, user)
    return training_services.training_run_create(project=project, trigger="manual")


def _held_model():
    held = pipeline.trained_held()
    return None if held is None else weakref.ref(held[1].model)


def test_a_step_of_another_run_drops_the_policy_and_the_first_run_is_evaluated_from_disk(
    project, project_factory, tiny_model_dir, make_user
):
    first = _run(project, make_user("a"))
    run_steps(first, ["batch", "update"], WORKER_A)
    assert pipeline.trained_held()[0] == first.pk
    model = _held_model()

    second = _run(project_factory("other", tiny_model_dir), make_user("b"))
    run_steps(second, ["batch"], WORKER_A)  # this worker's next run starts
    assert pipeline.trained_held() is None
    gc.collect()
    assert model() is None  # nothing else keeps the trained model alive

    run_steps(first, ["save", "evaluate", "promote"], WORKER_B)
    first.refresh_from_db()
    assert first.status == "succeeded" and first.result_version.evaluated_at is not None


def test_the_evaluate_step_empties_the_slot(project, make_user):
    run = _run(project, make_user("a"))
    run_steps(run, ["batch", "update", "save"], WORKER_A)
    assert pipeline.trained_held()[0] == run.pk  # kept across the save step for the evaluate step
    run_steps(run, ["evaluate"], WORKER_A)
    assert pipeline.trained_held() is None


def test_a_run_that_fails_or_is_cancelled_after_the_update_drops_the_policy(project, project_factory, tiny_model_dir, make_user, staff_user):
    failing = _run(project, make_user("a"))
    run_steps(failing, ["batch", "update"], WORKER_A)
    shutil.rmtree(liveness.run_work_dir(failing) / pipeline.TRAINED_DIR)  # the save step cannot find the weights
    run_steps(failing, ["save"], WORKER_A)
    assert TrainingRun.objects.get(pk=failing.pk).status == "failed"
    assert pipeline.trained_held() is None

    cancelled = _run(project_factory("other", tiny_model_dir), make_user("b"))
    run_steps(cancelled, ["batch", "update"], WORKER_A)
    training_services.training_run_cancel(run=TrainingRun.objects.get(pk=cancelled.pk), user=staff_user)
    run_steps(cancelled, ["save"], WORKER_A)
    assert TrainingRun.objects.get(pk=cancelled.pk).status == "cancelled"
    steps = steps_of(cancelled)
    assert [steps[n].status for n in STEP_ORDER][:2] == ["done", "done"]
    assert pipeline.trained_held() is None


def test_any_other_task_in_the_process_drops_the_policy(project, make_user):
    run = _run(project, make_user("a"))
    run_steps(run, ["batch", "update"], WORKER_A)
    assert pipeline.trained_held() is not None
    training_runs_reap.apply()
    assert pipeline.trained_held() is None
