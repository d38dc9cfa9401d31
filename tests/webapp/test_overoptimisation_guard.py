"""The over-optimisation guard (issue 16, item 6): a version the reward model likes but people do not is held back."""

from __future__ import annotations

import pytest

from webapp.annotation.importers import PromptRow
from webapp.annotation.models import Completion, Rating
from webapp.annotation.services import prompts_create
from webapp.policies.models import ModelVersion
from webapp.rewards import services as reward_services
from webapp.training import overoptimisation, pipeline
from webapp.training import services as training_services
from webapp.training.models import TrainingRun, VersionSample

from tests.webapp.rewards_helpers import BAD, GOOD, _completion, _rate_learnable, many_prompts  # noqa: F401


@pytest.fixture
def setup(project, annotator, many_prompts, make_user):
    """RM1 learned GOOD > BAD; the candidate's held-out samples are GOOD, its parent's BAD (a positive predicted
    gain). The parent's 72 rated completions (half rated 5, half 1) average 0 in reward units."""
    _rate_learnable(project, many_prompts, annotator)
    rm = reward_services.reward_model_fit(project=project)
    prompts_create(project=project, rows=[PromptRow(line=i, text=f"held-out {i}", held_out=True) for i in range(4)])
    parent = project.served_version
    candidate = ModelVersion.objects.create(
        project=project, number=1, kind="full", weights_path=project.base_model_path, parent=parent
    )
    for prompt in project.prompts.filter(held_out=True):
        for version, token in ((candidate, GOOD), (parent, BAD)):
            VersionSample.objects.create(
                version=version, prompt=prompt, text="x", token_ids=[token] * 5, logprobs=[-1.0] * 5,
                ref_logprobs=[-1.0] * 5, finished=True,
            )
    run = training_services.training_run_create(project=project, trigger="manual")
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, result_version=candidate, reward_model=rm
    )
    people = [make_user(f"rater{i}") for i in range(2)]
    return {"project": project, "parent": parent, "candidate": candidate, "run": TrainingRun.objects.get(pk=run.pk),
            "prompts": many_prompts, "people": people}


def _rate(setup, version, score, n=8):
    for i in range(n):
        c = _completion(setup["project"], setup["prompts"][i], GOOD if score > 3 else BAD, version=version)
        Rating.objects.create(completion=c, annotator=setup["people"][0], score=score)


def test_predicted_gain_is_the_models_view_of_the_held_out_samples(setup):
    check = overoptimisation.rm_gain_check(run=setup["run"], version=setup["candidate"], parent=setup["parent"])
    assert check.predicted_gain > 0.1
    assert check.human_gain is None and check.reasons == []  # nobody rated the candidate: nothing to overrule


def test_the_guard_holds_back_a_version_people_rate_worse_than_the_model_predicts(setup):
    _rate(setup, setup["candidate"], score=1)
    _rate(setup, setup["parent"], score=3)

    check = overoptimisation.rm_gain_check(run=setup["run"], version=setup["candidate"], parent=setup["parent"])

    assert check.human_gain == pytest.approx(-1.0)
    assert len(check.reasons) == 1
    assert "predicts a gain of +" in check.reasons[0] and "show -1.00 (8 rated completions" in check.reasons[0]
    assert "exploiting the reward model" in check.reasons[0]


def test_when_people_agree_with_the_model_the_version_passes(setup):
    _rate(setup, setup["candidate"], score=5)
    _rate(setup, setup["parent"], score=1)
    check = overoptimisation.rm_gain_check(run=setup["run"], version=setup["candidate"], parent=setup["parent"])
    assert check.human_gain == pytest.approx(1.0 - (-8 / 80))  # parent: 72 at 0 and 8 at -1
    assert check.reasons == []


def test_too_few_human_ratings_do_not_decide(setup):
    _rate(setup, setup["candidate"], score=1, n=7)
    _rate(setup, setup["parent"], score=3)
    check = overoptimisation.rm_gain_check(run=setup["run"], version=setup["candidate"], parent=setup["parent"])
    assert check.human_gain is None and check.reasons == [] and check.n_human == (7, 80)


def test_a_run_without_a_reward_model_is_not_checked(setup):
    TrainingRun.objects.filter(pk=setup["run"].pk).update(reward_model=None)
    _rate(setup, setup["candidate"], score=1)
    _rate(setup, setup["parent"], score=3)
    run = TrainingRun.objects.get(pk=setup["run"].pk)
    assert overoptimisation.rm_gain_check(run=run, version=setup["candidate"], parent=setup["parent"]).reasons == []


def test_the_promotion_step_keeps_the_version_unserved_with_the_reason(setup):
    _rate(setup, setup["candidate"], score=1)
    _rate(setup, setup["parent"], score=3)

    pipeline.step_promote(run=setup["run"], config=None)

    run = TrainingRun.objects.get(pk=setup["run"].pk)
    setup["project"].refresh_from_db()
    setup["candidate"].refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and not run.promoted
    assert "exploiting the reward model" in run.held_back_reason
    assert "exploiting the reward model" in setup["candidate"].held_back_reason
    assert setup["project"].served_version == setup["parent"]
    assert run.metrics["guard/rm_human_gain"] == pytest.approx(-1.0)
    assert "reward-model gain check: predicted +" in run.log


def test_the_scatter_pairs_each_rated_completion_with_its_model_score(setup):
    setup["run"].ratings.set(Rating.objects.filter(completion__model_version=setup["parent"]))  # the batch step's link
    _rate(setup, setup["candidate"], score=1)
    for c in Completion.objects.filter(model_version=setup["candidate"]):
        Completion.objects.filter(pk=c.pk).update(rm_score=0.5)
    points = overoptimisation.rm_vs_human_points(run=setup["run"])
    held = points["v1's outputs (held out)"]
    assert held["x"] == [0.5] * 8 and held["y"] == [1.0] * 8  # Likert 1, the rating's own level
    fitted = points["ratings trained on (fitted)"]
    assert len(fitted["x"]) == 72 and set(fitted["y"]) == {1.0, 5.0}


def test_the_run_page_shows_the_reward_model_plot_drawn_by_the_worker(setup, staff_client, settings, tmp_path):
    from webapp.policies import tasks as policy_tasks

    settings.DATA_DIR = tmp_path  # a plots folder of its own: no other test's drawing of the same data

    project, run = setup["project"], setup["run"]
    page = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert "Reward model vs people" in page and "rm-vs-human.png" in page

    url = f"/staff/p/{project.slug}/runs/{run.pk}/rm-vs-human.png"
    first = staff_client.get(url)
    assert first["Content-Type"] == "image/png" and first["X-Plot"] == "drawing"
    from webapp.training.selectors import run_rm_vs_human_spec

    run = TrainingRun.objects.select_related("reward_model", "result_version").get(pk=run.pk)
    kind, data = run_rm_vs_human_spec(run)
    policy_tasks.plot_draw(kind, data, f"run-{run.pk}-rm")  # the worker's task, run here
    drawn = staff_client.get(url)
    assert drawn["Content-Type"] == "image/png" and drawn["X-Plot"] == "ready"
    assert drawn.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_human_only_run_has_no_reward_model_plot(setup, staff_client):
    project, run = setup["project"], setup["run"]
    TrainingRun.objects.filter(pk=run.pk).update(reward_model=None)
    assert "Reward model vs people" not in staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/rm-vs-human.png").status_code == 404
