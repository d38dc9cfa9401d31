"""The staff page of reward models (webapp.rewards.views)."""

from __future__ import annotations

import pytest

from webapp.rewards import tasks
from webapp.rewards.models import RewardModelVersion


def _version(project, number=1, **metrics):
    return RewardModelVersion.objects.create(
        project=project,
        number=number,
        n_ratings=40,
        n_judgments=38,
        rating_ids=list(range(40)),
        rating_ids_sha256="ab" * 32,
        metrics={"held_out/n_ratings": 8, "held_out/n_pairs": 0, **metrics},
        backbone_path="/nowhere",
        artefact_path="/nowhere/rm",
        sha256="0" * 64,
    )


def test_staff_see_each_version_with_its_ratings_and_held_out_metrics(staff_client, project):
    _version(
        project,
        **{
            "held_out/pearson": 0.512,
            "held_out/spearman": 0.47,
            "held_out/pairwise_accuracy": 0.66,
            "held_out/calibration": [{"predicted": -0.5, "rated": -0.25, "n": 4}],
        },
    )
    page = staff_client.get(f"/staff/p/{project.slug}/reward-models/").content.decode()
    assert 'data-rm="1"' in page and "RM1" in page
    assert "0.512" in page and "0.470" in page and "0.660" in page
    assert "-0.50 → -0.25 (4)" in page
    assert "abababababab" in page
    assert "Judgments so far: <strong>0</strong> (a fit needs at least 32)" in page


def test_the_page_says_when_there_is_no_reward_model_yet(staff_client, project):
    page = staff_client.get(f"/staff/p/{project.slug}/reward-models/").content.decode()
    assert "No reward model yet." in page


def test_annotators_get_403(client, annotator, project):
    client.force_login(annotator)
    assert client.get(f"/staff/p/{project.slug}/reward-models/").status_code == 403
    assert client.post(f"/staff/p/{project.slug}/reward-models/fit/").status_code == 403


def test_fit_now_with_too_few_ratings_says_so_and_queues_nothing(staff_client, project, monkeypatch):
    queued = []
    monkeypatch.setattr(tasks.reward_model_fit, "delay_on_commit", lambda pk: queued.append(pk))
    response = staff_client.post(f"/staff/p/{project.slug}/reward-models/fit/", follow=True)
    assert "Too few ratings to fit a reward model: 0 judgments, at least 32 are needed." in response.content.decode()
    assert queued == []


def test_fit_now_queues_a_fit_when_there_are_enough_ratings(
    staff_client, project, annotator, make_completion, monkeypatch, settings
):
    from webapp.annotation.models import Rating

    settings.REWARDLOOP_RM_MIN_JUDGMENTS = 2
    for score in (1, 5):
        Rating.objects.create(completion=make_completion(project), annotator=annotator, score=score)
    queued = []
    monkeypatch.setattr(tasks.reward_model_fit, "delay_on_commit", lambda pk: queued.append(pk))
    response = staff_client.post(f"/staff/p/{project.slug}/reward-models/fit/", follow=True)
    assert "Reward-model fit queued on 2 judgments" in response.content.decode()
    assert queued == [project.pk]


@pytest.mark.parametrize("method", ["get"])
def test_fit_now_is_post_only(staff_client, project, method):
    assert getattr(staff_client, method)(f"/staff/p/{project.slug}/reward-models/fit/").status_code == 405


def test_the_staff_menu_links_the_page(staff_client, project):
    page = staff_client.get(f"/staff/p/{project.slug}/runs/").content.decode()
    assert f'href="/staff/p/{project.slug}/reward-models/"' in page
