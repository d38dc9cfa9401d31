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


# ---------------------------------------------------------------- the reward settings form


GOOD_SETTINGS = {
    "reward_source": "reward_model",
    "rm_samples_per_prompt": 6,
    "rm_pessimism": 0.5,
    "active_queue": "on",
    "active_uniform_share": 0.3,
    "shadow_share": 0.2,
}


def test_staff_switch_the_reward_source_and_the_active_queue(staff_client, project):
    from webapp.policies.models import AuditEvent

    page = staff_client.get(f"/staff/p/{project.slug}/reward-models/").content.decode()
    assert "Learning from ratings" in page and 'value="reward_model"' in page

    response = staff_client.post(f"/staff/p/{project.slug}/reward-models/settings/", GOOD_SETTINGS)

    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.reward_source, project.rm_samples_per_prompt, project.rm_pessimism) == ("reward_model", 6, 0.5)
    assert project.active_queue and project.active_uniform_share == 0.3 and project.shadow_share == 0.2
    event = AuditEvent.objects.get(action="settings")
    assert event.target == "reward settings" and event.detail["reward_source"] == ["human", "reward_model"]


def test_bad_reward_settings_save_nothing_and_say_which_field(staff_client, project):
    bad = {**GOOD_SETTINGS, "active_uniform_share": 1.5, "rm_samples_per_prompt": 1, "reward_source": "oracle"}

    response = staff_client.post(f"/staff/p/{project.slug}/reward-models/settings/", bad)

    assert response.status_code == 400
    page = response.content.decode()
    assert "Nothing was saved" in page
    assert "Ensure this value is less than or equal to 1" in page
    assert "Ensure this value is greater than or equal to 2" in page
    assert "Select a valid choice" in page
    project.refresh_from_db()
    assert project.reward_source == "human" and not project.active_queue


def test_annotators_cannot_change_reward_settings(client, annotator, project):
    client.force_login(annotator)
    assert client.post(f"/staff/p/{project.slug}/reward-models/settings/", GOOD_SETTINGS).status_code == 403
    project.refresh_from_db()
    assert project.reward_source == "human"


def test_the_page_counts_served_items_by_why_they_were_chosen(staff_client, project, annotator, make_completion):
    from webapp.annotation import services as annotation_services

    make_completion(project)
    annotation_services.lease_next(project=project, annotator=annotator)
    page = staff_client.get(f"/staff/p/{project.slug}/reward-models/").content.decode()
    assert "queue order (unfinished items first, then oldest): <strong>1</strong>" in page
