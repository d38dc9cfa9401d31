"""U+0000 (NUL) from the model or from an annotator's comment, on SQLite and on PostgreSQL.

PostgreSQL text columns reject NUL; a byte-level tokenizer has a token for byte 0
(token 188 of the tiny model's), so a model can emit one at any step.
"""

import dataclasses

import pytest
from django.urls import reverse

import pgcore.rollout
from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation import services
from webapp.annotation.models import Comparison, Completion, Rating

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def sampler_emitting_nul(monkeypatch):
    """The real sampler, each completion followed by the token that decodes to NUL (as if sampled).

    Returns the list of rollouts it produced, so a test can compare what was stored.
    """
    real = pgcore.rollout.generate_stream
    produced = []

    def generate_stream(policy, prompts, **kwargs):
        (nul_id,) = [i for i in range(len(policy.tokenizer)) if policy.tokenizer.decode([i]) == "\x00"]
        for i, r in real(policy, prompts, **kwargs):
            ids = [nul_id, *r.completion_ids]
            rollout = dataclasses.replace(
                r,
                completion_ids=ids,
                behaviour_logprobs=[-3.0, *r.behaviour_logprobs],
                text=policy.tokenizer.decode(ids, skip_special_tokens=True),
            )
            produced.append(rollout)
            yield i, rollout

    monkeypatch.setattr(pgcore.rollout, "generate_stream", generate_stream)
    return produced


def test_a_completion_with_nul_is_stored_with_its_exact_token_ids_and_a_replacement_character(
    project, sampler_emitting_nul
):
    assert services.completion_pool_refill(project=project, seed=0) == project.pool_target

    stored = sorted(Completion.objects.all(), key=lambda c: c.token_ids)
    produced = sorted(sampler_emitting_nul, key=lambda r: r.completion_ids)
    assert "\x00" in produced[0].text
    assert [c.token_ids for c in stored] == [r.completion_ids for r in produced]
    assert [c.behaviour_logprobs for c in stored] == [r.behaviour_logprobs for r in produced]
    assert [c.text for c in stored] == [r.text.replace("\x00", "\ufffd") for r in produced]


def test_a_rating_whose_comment_holds_nul_is_stored_without_the_nul(client, annotator, project, make_completion):
    completion = make_completion(project)
    client.force_login(annotator)
    client.get(reverse("annotation:annotate", args=[project.slug]))

    response = client.post(
        reverse("annotation:rate", args=[project.slug, completion.pk]),
        {"score": "4", "comment": "good\x00 start\x00"},
        **HTMX,
    )

    assert response.status_code == 200
    rating = Rating.objects.get()
    assert (rating.score, rating.comment) == (4, "good start")


def test_a_comparison_whose_comment_holds_nul_is_stored_without_the_nul(
    client, make_user, tiny_model_dir, models_dir, make_completion
):
    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    pair = make_pair(project, make_completion)
    user = make_user("pairy")
    client.force_login(user)
    client.get(reverse("annotation:annotate", args=[project.slug]))

    response = client.post(
        reverse("annotation:rate", args=[project.slug, pair.completion_a_id]),
        {"choice": "left", "a_on_left": "1", "comment": "\x00A is better"},
        **HTMX,
    )

    assert response.status_code == 200
    assert Comparison.objects.get().comment == "A is better"
    assert Rating.objects.count() == 2


def test_a_held_out_sample_with_nul_is_stored_by_the_evaluation_with_its_exact_token_ids(project, sampler_emitting_nul):
    from webapp.training.evaluation import version_samples_ensure
    from webapp.training.models import VersionSample

    version = project.served_version
    assert version_samples_ensure(version=version) > 0

    stored = sorted(VersionSample.objects.filter(version=version), key=lambda s: s.token_ids)
    produced = sorted(sampler_emitting_nul, key=lambda r: r.completion_ids)
    assert "\x00" in produced[0].text
    assert [s.token_ids for s in stored] == [r.completion_ids for r in produced]
    assert [s.text for s in stored] == [r.text.replace("\x00", "\ufffd") for r in produced]
