"""The shadow queue (issue 16): a candidate version waiting for people's ratings has a share of
the served items, blind, and the over-optimisation guard decides with those ratings."""

from __future__ import annotations

import random
import re

import pytest

from webapp.annotation import selectors, services
from webapp.annotation.importers import PromptRow
from webapp.annotation.models import ChosenBy, Completion, Lease
from webapp.annotation.services import prompts_create
from webapp.policies.models import ModelVersion, Project
from webapp.rewards import services as reward_services
from webapp.training import overoptimisation, pipeline
from webapp.training import services as training_services
from webapp.training.models import TrainingRun, VersionSample

from tests.webapp.api_helpers import api_for  # noqa: F401
from tests.webapp.rewards_helpers import BAD, GOOD, _rate_learnable, many_prompts  # noqa: F401

HTMX = {"HTTP_HX_REQUEST": "true"}


def _candidate(project) -> ModelVersion:
    """A version 1 trained from the served base (full weights: the base's own folder)."""
    return ModelVersion.objects.create(
        project=project, number=1, kind="full", weights_path=str(project.base_model_path), parent=project.served_version
    )


def _shadow(project, candidate, share) -> None:
    Project.objects.filter(pk=project.pk).update(shadow_version=candidate, shadow_share=share)
    project.refresh_from_db()


# ---------------------------------------------------------------- the queue


@pytest.mark.parametrize("share", [0.25, 0.0])
def test_the_shadow_share_is_honoured_over_many_leases(project, annotator, make_completion, monkeypatch, share):
    candidate = _candidate(project)
    served = [make_completion(project, text=f"served {i}") for i in range(400)]
    shadow = [make_completion(project, text=f"candidate {i}", version=candidate) for i in range(400)]
    _shadow(project, candidate, share)
    monkeypatch.setattr(services, "queue_rng", random.Random(16))

    chosen = []
    for _ in range(400):
        lease = services.lease_next(project=project, annotator=annotator)
        chosen.append((Lease.objects.get(pk=lease.pk).chosen_by, lease.completion.model_version_id))
        services.item_skip(annotator=annotator, completion=Completion.objects.get(pk=lease.completion_id))

    from_candidate = sum(version == candidate.pk for _, version in chosen)
    assert all((why == ChosenBy.SHADOW) == (version == candidate.pk) for why, version in chosen)
    if share:
        assert abs(from_candidate / 400 - share) < 0.05  # binomial SD at 400 draws: 0.022
    else:
        assert from_candidate == 0
    assert len(served) == len(shadow) == 400


def test_without_a_candidate_the_queue_never_serves_an_unserved_version(project, annotator, make_completion):
    candidate = _candidate(project)
    item = make_completion(project, text="candidate", version=candidate)
    _shadow(project, candidate, 1.0)

    # No reward-model run made it: the schedule drops it from the shadow queue, unserved.
    assert overoptimisation.shadow_candidates_recheck() == [(project.slug, candidate.number, "dropped")]

    project.refresh_from_db()
    item.refresh_from_db()
    assert project.shadow_version is None and item.retired_at is not None
    assert services.lease_next(project=project, annotator=annotator) is None


def test_a_shadow_draw_with_nothing_left_of_the_candidate_serves_the_queue(project, annotator, make_completion):
    candidate = _candidate(project)
    served = make_completion(project, text="served")
    _shadow(project, candidate, 1.0)

    lease = services.lease_next(project=project, annotator=annotator)

    assert lease.completion_id == served.pk and Lease.objects.get(pk=lease.pk).chosen_by == ChosenBy.FIFO


def test_shadow_ratings_are_stored_like_any_other(project, annotator, make_completion):
    candidate = _candidate(project)
    item = make_completion(project, text="candidate", version=candidate)
    _shadow(project, candidate, 1.0)

    lease = services.lease_next(project=project, annotator=annotator)
    rating = services.rating_create(annotator=annotator, completion=Completion.objects.get(pk=lease.completion_id), score=2)

    assert lease.completion_id == item.pk
    assert rating.completion_id == item.pk and Lease.objects.get(pk=lease.pk).fulfilled
    assert overoptimisation.human_rewards(version=candidate) == [-0.5]


def test_nothing_on_the_card_says_it_is_a_candidate(client, annotator, make_user, project, make_completion, api_for):  # noqa: F811
    """The candidate's card is the served version's card, but for the item's id.

    Two annotators, each on their first card (a skip would put an undo button on the second card):
    the first is handed the candidate's item, which it then holds, so the second gets the served one.
    """
    second = make_user("ann2")
    candidate = _candidate(project)
    from_candidate = make_completion(project, text="the same words", version=candidate)
    from_served = make_completion(project, text="the same words")
    _shadow(project, candidate, 1.0)

    def card(expected, who):
        client.force_login(who)
        api = api_for(who)
        client.post(f"/p/{project.slug}/annotate/next/", **HTMX)
        held = selectors.lease_held(project=project, annotator=who)
        assert held.completion_id == expected.pk
        html = client.get(f"/p/{project.slug}/annotate/card/", **HTMX).content.decode()
        item = api.post(f"/projects/{project.slug}/queue/next").json()["item"]
        html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", html)
        html = re.sub(r'name="rater" value="[^"]*"', "", html)  # the annotator's own signed id, not the item's
        pk = expected.pk
        for where in (f'data-completion="{pk}"', f"/annotate/{pk}/", f'data-completion-id="{pk}"', f"rank_{pk}"):
            html = html.replace(where, where.replace(str(pk), "ID"))
        return html, {**item, "completion_id": "ID", "completion": None}

    shadow_html, shadow_api = card(from_candidate, annotator)
    assert Lease.objects.get(completion=from_candidate).chosen_by == ChosenBy.SHADOW
    served_html, served_api = card(from_served, second)

    assert "the same words" in shadow_html
    assert shadow_html == served_html
    assert {**shadow_api, "lease_expires_at": None} == {**served_api, "lease_expires_at": None}
    assert "version" not in shadow_api  # the item names no version at all (blind)


# ---------------------------------------------------------------- the pool


def test_the_pool_refill_samples_the_candidates_share(project, annotator):
    candidate = _candidate(project)
    Project.objects.filter(pk=project.pk).update(pool_target=8, pool_low_water=8)
    _shadow(project, candidate, 0.25)

    services.completion_pool_refill(project=project, seed=0)

    assert selectors.pool_size(project=project) == 8
    assert selectors.pool_size(project=project, version_id=candidate.pk) == 2  # ceil(0.25 * 8)
    assert not selectors.pool_needs_refill(project=project)
    rated = Completion.objects.filter(model_version=candidate).first()
    services.rating_create(annotator=annotator, completion=rated, score=3)
    assert selectors.pool_needs_refill(project=project)  # 1 of 2 left: half the candidate's share


# ---------------------------------------------------------------- the guard


@pytest.fixture
def waiting(project, annotator, many_prompts, make_user):  # noqa: F811
    """A reward-model run whose candidate the reward model prefers (held-out samples GOOD against the
    parent's BAD), promoted with the shadow queue on: it waits for people's ratings."""
    _rate_learnable(project, many_prompts, annotator)  # the parent's 72 rated completions average 0
    rm = reward_services.reward_model_fit(project=project)
    prompts_create(project=project, rows=[PromptRow(line=i, text=f"held-out {i}", held_out=True) for i in range(4)])
    parent = project.served_version
    candidate = _candidate(project)
    for prompt in project.prompts.filter(held_out=True):
        for version, token in ((candidate, GOOD), (parent, BAD)):
            VersionSample.objects.create(
                version=version, prompt=prompt, text="x", token_ids=[token] * 5, logprobs=[-1.0] * 5,
                ref_logprobs=[-1.0] * 5, finished=True,
            )
    Project.objects.filter(pk=project.pk).update(shadow_share=1.0, pool_target=8, pool_low_water=8)
    run = training_services.training_run_create(project=project, trigger="manual")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, result_version=candidate, reward_model=rm)
    pipeline.step_promote(run=TrainingRun.objects.get(pk=run.pk), config=None)
    project.refresh_from_db()
    return {"project": project, "parent": parent, "candidate": candidate, "run": run,
            "people": [make_user(f"person{i}") for i in range(4)]}


def _people_rate_through_the_queue(waiting, score) -> int:
    """Each person takes items from the queue (all shadow at share 1) and rates them ``score``."""
    project = waiting["project"]
    rated = 0
    for person in waiting["people"]:
        while True:
            lease = services.lease_next(project=project, annotator=person)
            if lease is None or lease.completion.model_version_id != waiting["candidate"].pk:
                break
            assert Lease.objects.get(pk=lease.pk).chosen_by == ChosenBy.SHADOW
            services.rating_create(annotator=person, completion=Completion.objects.get(pk=lease.completion_id), score=score)
            rated += 1
    return rated


def test_a_reward_model_version_waits_in_the_shadow_queue(waiting):
    run = TrainingRun.objects.get(pk=waiting["run"].pk)
    assert run.status == TrainingRun.Status.SUCCEEDED and not run.promoted
    assert "Waiting for people's ratings of v1's outputs" in run.held_back_reason
    assert waiting["project"].shadow_version_id == waiting["candidate"].pk
    assert waiting["project"].served_version_id == waiting["parent"].pk
    assert not waiting["candidate"].held_back_reason
    assert overoptimisation.shadow_candidates_recheck() == []  # nobody has rated it yet: it keeps waiting


def test_with_the_shadow_queue_off_the_version_is_served_at_once(project, annotator, many_prompts, make_user):  # noqa: F811
    _rate_learnable(project, many_prompts, annotator)
    rm = reward_services.reward_model_fit(project=project)
    prompts_create(project=project, rows=[PromptRow(line=1, text="held-out", held_out=True)])
    candidate = _candidate(project)
    for version, token in ((candidate, GOOD), (project.served_version, BAD)):
        VersionSample.objects.create(
            version=version, prompt=project.prompts.get(text="held-out"), text="x", token_ids=[token] * 5,
            logprobs=[-1.0] * 5, ref_logprobs=[-1.0] * 5, finished=True,
        )
    Project.objects.filter(pk=project.pk).update(shadow_share=0.0)
    run = training_services.training_run_create(project=project, trigger="manual")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, result_version=candidate, reward_model=rm)

    pipeline.step_promote(run=TrainingRun.objects.get(pk=run.pk), config=None)

    project.refresh_from_db()
    assert project.served_version_id == candidate.pk and project.shadow_version_id is None


def test_people_rating_the_shadow_items_worse_hold_the_candidate_back(waiting):
    services.completion_pool_refill(project=waiting["project"], seed=0)  # the candidate's completions, for real
    rated = _people_rate_through_the_queue(waiting, score=1)
    assert rated >= overoptimisation.min_human()

    decided = overoptimisation.shadow_candidates_recheck()

    project, candidate = waiting["project"], waiting["candidate"]
    project.refresh_from_db()
    candidate.refresh_from_db()
    assert decided == [(project.slug, 1, "held back")]
    assert "exploiting the reward model" in candidate.held_back_reason
    assert f"show -1.00 ({rated} rated completions" in candidate.held_back_reason
    assert project.shadow_version_id is None and project.served_version_id == waiting["parent"].pk
    run = TrainingRun.objects.get(pk=waiting["run"].pk)
    assert run.metrics["guard/rm_human_gain"] == pytest.approx(-1.0)
    assert "exploiting the reward model" in run.held_back_reason


def test_people_agreeing_with_the_model_get_the_candidate_served(waiting):
    services.completion_pool_refill(project=waiting["project"], seed=0)
    assert _people_rate_through_the_queue(waiting, score=5) >= overoptimisation.min_human()

    assert overoptimisation.shadow_candidates_recheck() == [(waiting["project"].slug, 1, "served")]

    project = waiting["project"]
    project.refresh_from_db()
    assert project.served_version_id == waiting["candidate"].pk and project.shadow_version_id is None
    run = TrainingRun.objects.get(pk=waiting["run"].pk)
    assert run.promoted and run.held_back_reason == ""


def test_serving_another_version_ends_the_wait(waiting):
    from webapp.policies import services as policy_services

    policy_services.version_promote(version=waiting["candidate"], user=None, refill_pool=False)
    waiting["project"].refresh_from_db()
    assert waiting["project"].shadow_version_id is None
