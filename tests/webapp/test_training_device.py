"""A worker loads policies onto the device ``pgcore.precision.select_device`` chooses (REWARDLOOP_DEVICE forces one).

PyTorch's ``meta`` device stands in for a GPU on machines without one: a policy loaded
there proves the choice reached the loader. A training worker told to use a GPU it does
not have fails the run with the reason rather than training on the CPU unasked.
"""

from __future__ import annotations

import torch

from tests.webapp.test_run_pipeline import rate_pool, steps_of
from webapp.policies.runtime import policy_load
from webapp.training import services as training_services
from webapp.training.models import STEP_ORDER


def test_a_version_is_loaded_onto_the_device_the_environment_names(project, monkeypatch):
    monkeypatch.setenv("REWARDLOOP_DEVICE", "meta")
    policy = policy_load(project.served_version, trainable=True)
    assert {p.device.type for p in policy.model.parameters()} == {"meta"}
    monkeypatch.setenv("REWARDLOOP_DEVICE", "cpu")
    assert {p.device.type for p in policy_load(project.served_version).model.parameters()} == {"cpu"}


def test_a_run_on_a_worker_told_to_use_a_gpu_it_lacks_fails_with_the_reason(project, make_user, monkeypatch):
    rate_pool(project, make_user("a"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("REWARDLOOP_DEVICE", "cuda")
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "failed" and "no CUDA GPU" in run.error
    steps = steps_of(run)
    assert [steps[n].status for n in STEP_ORDER] == ["done", "failed", "skipped", "skipped", "skipped"]
