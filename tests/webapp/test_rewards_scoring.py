"""New pool completions are scored by the latest reward model when they are stored, failing soft."""

from __future__ import annotations

import logging

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion
from webapp.policies import artifacts
from webapp.rewards import services

from tests.webapp.rewards_helpers import _rate_learnable, many_prompts  # noqa: F401


def _refill(project, django_capture_on_commit_callbacks) -> list[Completion]:
    before = set(Completion.objects.values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        created = annotation_services.completion_pool_refill(project=project, max_new=4, seed=0)
    assert created > 0
    return list(Completion.objects.exclude(pk__in=before))


def test_new_pool_completions_get_the_latest_models_score(
    project, annotator, many_prompts, django_capture_on_commit_callbacks
):
    _rate_learnable(project, many_prompts, annotator)
    version = services.reward_model_fit(project=project)

    new = _refill(project, django_capture_on_commit_callbacks)

    assert all(c.rm_score is not None and c.rm_uncertainty >= 0 for c in new)
    # The same numbers the version gives when asked directly.
    for c in new:
        Completion.objects.filter(pk=c.pk).update(rm_score=None, rm_uncertainty=None)
    services.completions_score(project=project, completion_ids=[c.pk for c in new], version=version)
    expected = dict(Completion.objects.filter(pk__in=[c.pk for c in new]).values_list("pk", "rm_score"))
    assert expected == {c.pk: c.rm_score for c in new}


def test_without_a_reward_model_new_completions_stay_unscored(project, django_capture_on_commit_callbacks):
    new = _refill(project, django_capture_on_commit_callbacks)
    assert all(c.rm_score is None and c.rm_uncertainty is None for c in new)


def test_a_corrupt_model_leaves_them_unscored_and_the_pool_still_fills(
    project, annotator, many_prompts, django_capture_on_commit_callbacks, caplog
):
    _rate_learnable(project, many_prompts, annotator)
    version = services.reward_model_fit(project=project)
    weights = artifacts.models_folder(version.artefact_path, published=True) / "reward_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")

    with caplog.at_level(logging.WARNING):
        new = _refill(project, django_capture_on_commit_callbacks)

    assert all(c.rm_score is None for c in new)
    assert f"RM{version.number} cannot be loaded" in caplog.text


def test_scoring_ignores_another_projects_completions(project, annotator, many_prompts):
    _rate_learnable(project, many_prompts, annotator)
    services.reward_model_fit(project=project)
    assert services.completions_score(project=project, completion_ids=[10**6]) == 0
