"""Reward-model scoring keeps the frozen backbone loaded in the process, and loads it again
when the base model's folder changes."""

from __future__ import annotations

import shutil

import pytest
import torch

from pgcore.policy import load_policy
from pgcore.reward_model import completion_features
from pgcore.tiny import write_tiny_model
from webapp.policies.runtime import folder_stamp, frozen_policy
from webapp.rewards import services

PROMPTS = [[5, 6, 7], [8, 9]]
COMPLETIONS = [[50, 51, 52, 53], [200, 201]]


@pytest.fixture
def own_base(project_factory, tiny_model_dir, tmp_path):
    """A project whose base model is a copy of the tiny model that the test may rewrite."""
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    return project_factory("own", base), base


def _features(project):
    config = services.reward_model_config_for(project=project)
    return services.features_compute(
        project=project, prompt_ids=PROMPTS, completion_ids=COMPLETIONS, config=config
    )


def _forwards(policy) -> list:
    calls: list = []
    policy.model.model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_repeated_scoring_runs_on_one_loaded_backbone(own_base):
    project, base = own_base
    first = _features(project)
    cached = frozen_policy(base)
    calls = _forwards(cached)

    again = _features(project)
    third = _features(project)

    assert len(calls) == 2  # both later batches ran through the very model object kept in the process
    assert frozen_policy(base) is cached
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(third, first, rtol=0, atol=0)


def test_a_changed_base_is_loaded_again(own_base):
    project, base = own_base
    before = _features(project)
    old = frozen_policy(base)
    old_calls = _forwards(old)
    stamp = folder_stamp(base)

    write_tiny_model(base, seed=1)  # new weights, written atomically in place
    after = _features(project)

    assert folder_stamp(base) != stamp
    assert old_calls == []  # the stale backbone scored nothing
    assert frozen_policy(base) is not old
    fresh = load_policy(base)
    config = services.reward_model_config_for(project=project)
    expected = completion_features(fresh.model, PROMPTS, COMPLETIONS, config, pad_id=fresh.tokenizer.pad_token_id or 0)
    torch.testing.assert_close(after, expected)
    assert not torch.allclose(after, before)


def test_a_second_projects_base_replaces_the_first(own_base, project, tiny_model_dir):
    own, base = own_base
    _features(own)
    first = frozen_policy(base)
    _features(project)
    assert frozen_policy(tiny_model_dir) is not first
    assert frozen_policy(base) is not first  # one backbone kept at a time: the first was let go
