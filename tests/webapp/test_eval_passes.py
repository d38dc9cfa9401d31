"""The held-out evaluation does each pass over the completions once: fp32 sampling gives the
version's own logprobs, one scoring pass gives the base's, and no pass computes an entropy.

Real pgcore on the tiny model, a real training run, the real database; the scoring function is
wrapped (it still runs) only to count its calls and read its arguments.
"""

import pytest
import torch

import pgcore.logprobs
import pgcore.trainer
from pgcore.rollout import render_prompt
from webapp.annotation import services as annotation_services
from webapp.annotation.importers import PromptRow
from webapp.annotation.models import Completion, Rating
from webapp.policies.runtime import policy_load
from webapp.training import evaluation
from webapp.training import services as training_services
from webapp.training.models import VersionSample


@pytest.fixture
def scoring_calls(monkeypatch):
    """Each call of ``pgcore.logprobs.sequence_logprobs`` as ``(batch rows, with_entropy)``."""
    calls = []
    real = pgcore.logprobs.sequence_logprobs

    def counted(model, input_ids, attention_mask, completion_mask, *, with_entropy=True):
        calls.append((input_ids.shape[0], with_entropy))
        return real(model, input_ids, attention_mask, completion_mask, with_entropy=with_entropy)

    monkeypatch.setattr(pgcore.logprobs, "sequence_logprobs", counted)
    # Even where bf16 matrix multiplies are native (where "auto" would sample in bf16).
    monkeypatch.setattr(pgcore.trainer, "native_bf16_matmul", lambda: True)
    return calls


def _held_out(project, n):
    annotation_services.prompts_create(
        project=project,
        rows=[PromptRow(line=i + 1, text=f"Held-out review {i}: the plot", held_out=True) for i in range(n)],
    )


def test_evaluating_the_base_runs_no_scoring_pass_even_where_bf16_is_native(project, scoring_calls):
    _held_out(project, 2)
    v0 = project.served_version
    evaluation.version_evaluate(version=v0)
    v0.refresh_from_db()
    assert scoring_calls == []  # its own logprobs come from the fp32 sampler, and it is its own reference
    assert v0.evaluated_at is not None and v0.kl_to_base == 0.0


def test_a_trained_version_takes_one_scoring_pass_without_entropy_and_stores_exact_logprobs(
    project, make_user, scoring_calls
):
    _held_out(project, 3)
    evaluation.version_evaluate(version=project.served_version)  # measured at start-up, as the app does
    annotation_services.completion_pool_refill(project=project, seed=1)
    annotator = make_user("a")
    for completion in Completion.objects.filter(project=project):
        Rating.objects.create(completion=completion, annotator=annotator, score=5 if completion.pk % 2 else 1)
    run = training_services.training_run_create(project=project, trigger="manual")
    for step in ("batch", "update", "save"):
        training_services.training_step_run(run_id=run.pk, step=step, chain=False)
    scoring_calls.clear()  # the update's own passes are not the evaluation's
    training_services.training_step_run(run_id=run.pk, step="evaluate", chain=False)
    training_services.training_step_run(run_id=run.pk, step="promote", chain=False)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    version = run.result_version
    samples = list(VersionSample.objects.filter(version=version).select_related("prompt").order_by("prompt_id"))
    assert len(samples) == 4  # the tiny project's held-out prompt and these three
    # One scoring pass over the samples (the base's logprobs, one batch), asked for no entropy.
    assert scoring_calls == [(4, False)]

    # The stored logprobs are the version's exact fp32 logprobs of its samples.
    policy = policy_load(version, trainable=False)
    prompt_ids = [render_prompt(policy.tokenizer, s.prompt.text) for s in samples]
    exact = evaluation._token_logprobs(
        policy.model, policy.tokenizer.pad_token_id, prompt_ids, [s.token_ids for s in samples]
    )
    for sample, row in zip(samples, exact):
        torch.testing.assert_close(torch.tensor(sample.logprobs), torch.tensor(row), atol=1e-4, rtol=0)
    assert version.kl_to_base is not None and version.kl_to_base >= 0
