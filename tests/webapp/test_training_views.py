"""The staff pages over HTTP: permissions, forms and their messages, POST-only changes, plots, downloads."""


import pytest

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Rating
from webapp.policies.models import AuditEvent, ModelVersion
from tests.webapp.arena_helpers import add_version
from webapp.training import evaluation
from webapp.training import services as training_services
from webapp.training.models import TrainingRun

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rated(project, annotator, make_completion):
    for i in range(4):
        Rating.objects.create(completion=make_completion(project, text=f"c{i}"), annotator=annotator, score=1 + i)
    return project


def staff_urls(project, run_id=1):
    base = f"/staff/p/{project.slug}"
    gets = [
        f"{base}/runs/",
        f"{base}/runs/table/",
        f"{base}/runs/{run_id}/",
        f"{base}/runs/{run_id}/status/",
        f"{base}/runs/{run_id}/curves.png",
        f"{base}/versions/",
        f"{base}/versions/plots/ratings.png",
        f"{base}/versions/plots/kl.png",
        f"{base}/versions/audit/",
        f"{base}/versions/0/export/status/",
        f"{base}/versions/0/export/1/download/",
        f"{base}/compare/?a=0&b=0",
        f"{base}/compare/table/?a=0&b=0",
    ]
    posts = [
        f"{base}/train/",
        f"{base}/runs/{run_id}/cancel/",
        f"{base}/settings/",
        f"{base}/versions/0/promote/",
        f"{base}/versions/0/export/",
        f"{base}/compare/start/",
        f"{base}/export/ratings/",
    ]
    return gets, posts


def test_every_staff_page_and_action_is_forbidden_to_annotators(client, project, annotator):
    run = TrainingRun.objects.create(project=project, trigger="manual", parent_version=project.served_version)
    client.force_login(annotator)
    gets, posts = staff_urls(project, run.pk)
    for url in gets:
        assert client.get(url).status_code == 403, url
    for url in posts:
        assert client.post(url).status_code == 403, url
    assert not AuditEvent.objects.exists()


def test_actions_refuse_get_and_pages_require_login(client, staff_client, project):
    run = TrainingRun.objects.create(project=project, trigger="manual", parent_version=project.served_version)
    gets, posts = staff_urls(project, run.pk)
    for url in posts:
        assert staff_client.get(url).status_code == 405, url
    client.logout()
    assert client.get(gets[0]).status_code == 302


def test_train_now_with_bad_overrides_shows_clear_messages_and_queues_nothing(staff_client, rated):
    response = staff_client.post(f"/staff/p/{rated.slug}/train/", {"lr": "fast", "kl_coef": "-1", "epochs": "0"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Nothing was queued: check Learning rate, KL coefficient, Epochs below." in page
    # Each error once, next to its field (not repeated in the flash line above the form).
    assert page.count("Enter the learning rate as a number") == 1
    assert page.count("Ensure this value is greater than or equal to 0") == 1
    assert page.count("Ensure this value is greater than or equal to 1") == 1
    assert not TrainingRun.objects.exists()


def test_train_now_queues_a_run_with_the_overrides_and_audits_who(staff_client, staff_user, rated):
    response = staff_client.post(f"/staff/p/{rated.slug}/train/", {"lr": "0.0003", "kl_coef": "", "epochs": "3"})
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response.url.endswith(f"/runs/{run.pk}/")
    assert (run.config["lr"], run.config["epochs"], run.requested_by) == (0.0003, 3, staff_user)
    assert run.config["kl_coef"] == 0.05  # empty field: the project's setting
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.target) == ("train", staff_user, f"run {run.pk}")
    assert event.detail == {"overrides": {"lr": 0.0003, "epochs": 3}}


def test_train_now_without_new_ratings_says_so(staff_client, project):
    response = staff_client.post(f"/staff/p/{project.slug}/train/", {}, follow=True)
    assert "no new ratings" in response.content.decode()


def test_run_page_shows_progress_log_tail_cancel_and_polls_while_active(staff_client, rated):
    run = training_services.training_run_create(project=rated, trigger="manual")
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running",
        progress_step=3,
        progress_total=8,
        progress_epoch=1,
        progress_epochs=2,
        curve=[{"step": i, "epoch": 1, "losses/pg_loss": 0.1 * i, "objective/kl": 0.01 * i} for i in (1, 2, 3)],
        log="".join(f"line {i}\n" for i in range(100)),
    )
    page = staff_client.get(f"/staff/p/{rated.slug}/runs/{run.pk}/").content.decode()
    assert 'hx-trigger="every 2s"' in page
    assert '<progress value="3" max="8">' in page and "epoch 1 of 2 · minibatch step 3 of 8" in page
    assert "Cancel run" in page
    assert "line 99" in page and "line 80" in page and "line 79\n" not in page  # the last 20 lines
    png = staff_client.get(f"/staff/p/{rated.slug}/runs/{run.pk}/curves.png")
    assert png["Content-Type"] == "image/png" and png.content.startswith(PNG_MAGIC)
    assert f'hx-get="/staff/p/{rated.slug}/runs/{run.pk}/status/"' in page  # a partial URL, not the page's own
    partial = staff_client.get(f"/staff/p/{rated.slug}/runs/{run.pk}/status/", headers={"HX-Request": "true"})
    assert partial.content.decode().lstrip().startswith('<section id="run-status"')


def test_cancel_button_asks_a_running_run_to_stop(staff_client, staff_user, rated):
    run = training_services.training_run_create(project=rated, trigger="manual")
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    response = staff_client.post(f"/staff/p/{rated.slug}/runs/{run.pk}/cancel/", follow=True)
    run.refresh_from_db()
    assert run.cancel_requested_by == staff_user and run.status == "running"
    assert "stops at its next checkpoint" in response.content.decode()
    assert AuditEvent.objects.filter(action="cancel", actor=staff_user).exists()


def test_a_failed_run_shows_its_error(staff_client, project):
    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=project.served_version, status="failed",
        error="NonFiniteError: loss is nan at epoch 0, step 3",
    )
    page = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert "NonFiniteError: loss is nan at epoch 0, step 3" in page and "hx-trigger" not in page


def test_training_settings_form_changes_min_new_ratings_and_refuses_bad_values(staff_client, staff_user, project):
    url = f"/staff/p/{project.slug}/settings/"
    good = {
        "min_new_ratings": 7,
        "guard_max_kl": 0.3,
        "guard_min_distinct2_ratio": 0.6,
        "guard_max_identical_fraction": 0.4,
        "guard_eval_prompts": 8,
        "arena_voters": "staff",
        "arena_min_votes": 20,
        "production_feedback_weight": 0.25,
    }
    runs_page = staff_client.get(f"/staff/p/{project.slug}/runs/").content.decode()
    assert 'name="production_feedback_weight"' in runs_page and 'value="1.0"' in runs_page
    assert staff_client.post(url, good).status_code == 302
    project.refresh_from_db()
    assert (project.min_new_ratings, project.guard_max_kl, project.guard_eval_prompts) == (7, 0.3, 8)
    assert project.production_feedback_weight == 0.25
    detail = AuditEvent.objects.get(action="settings").detail
    assert detail["min_new_ratings"] == [4, 7] and detail["production_feedback_weight"] == [1.0, 0.25]
    response = staff_client.post(url, {**good, "min_new_ratings": 0, "guard_max_identical_fraction": 2,
                                       "production_feedback_weight": 11})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Nothing was saved: check" in page
    assert page.count("Ensure this value is greater than or equal to 1") == 1
    assert page.count("Ensure this value is less than or equal to 1.") == 1
    assert page.count("Ensure this value is less than or equal to 10.") == 1
    project.refresh_from_db()
    assert (project.min_new_ratings, project.production_feedback_weight) == (7, 0.25)


def test_versions_page_shows_lineage_run_rating_interval_and_promotes_in_one_post(staff_client, staff_user, project, make_user):
    annotation_services.completion_pool_refill(project=project, seed=21)
    users = [make_user("a"), make_user("b")]
    for completion in project.completions.all():
        for user, score in zip(users, (4, 5)):
            Rating.objects.create(completion=completion, annotator=user, score=score)
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    page = staff_client.get(f"/staff/p/{project.slug}/versions/").content.decode()
    assert "v0 → v1" in page and f"run #{run.pk}" in page
    assert "4.50 [" in page and "n=8" in page  # mean of v0's 8 ratings with a 95% interval
    assert page.count('data-promote="0"') == 1 and 'data-promote="1"' not in page  # v1 is served
    for plot in ("ratings.png", "kl.png"):
        png = staff_client.get(f"/staff/p/{project.slug}/versions/plots/{plot}")
        assert png.status_code == 200 and png.content.startswith(PNG_MAGIC)

    response = staff_client.post(f"/staff/p/{project.slug}/versions/0/promote/", {"confirm": "1", "reason": "v1 rambles"})
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.served_version.number == 0
    audit = staff_client.get(f"/staff/p/{project.slug}/versions/audit/").content.decode()
    assert "Served a version" in audit and staff_user.username in audit and "v0" in audit


def test_compare_page_shows_both_versions_on_the_same_held_out_prompts(staff_client, project):
    v0 = project.served_version
    evaluation.version_samples_ensure(version=v0)
    add_version(project, 1, text="the answer of v1")
    url = f"/staff/p/{project.slug}/compare/?a=0&b=1"
    page = staff_client.get(url).content.decode()
    sample = v0.samples.get()
    assert "Held-out prompt" in page and (sample.text or "(empty)") in page and "the answer of v1" in page
    assert "hx-trigger" not in page  # complete: no polling


def test_comparing_a_version_with_itself_says_so_instead_of_a_self_diff(staff_client, project):
    evaluation.version_samples_ensure(version=project.served_version)
    page = staff_client.get(f"/staff/p/{project.slug}/compare/?a=0&b=0", follow=True)
    assert page.redirect_chain and "v0 against itself has nothing to compare" in page.content.decode()
    table = staff_client.get(f"/staff/p/{project.slug}/compare/table/?a=0&b=0", HTTP_HX_REQUEST="true")
    assert table.status_code == 400 and "against itself" in table.content.decode()
    start = staff_client.post(f"/staff/p/{project.slug}/compare/start/", {"a": "0", "b": "0"}, follow=True)
    assert "v0 against itself has nothing to compare" in start.content.decode()


def test_compare_start_queues_missing_samples_and_the_page_polls_until_done(staff_client, project, monkeypatch):
    from webapp.celery import app

    queued = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kw: queued.append((name, args)))
    v1 = add_version(project, 1, prompts=[])
    response = staff_client.post(f"/staff/p/{project.slug}/compare/start/", {"a": "0", "b": "1"})
    assert response.status_code == 302 and response.url.endswith("compare/?a=0&b=1")
    assert sorted(args[0] for _, args in queued) == [project.served_version_id, v1.pk]
    assert {name for name, _ in queued} == {"webapp.training.tasks.version_samples_ensure"}
    page = staff_client.get(response.url).content.decode()
    assert 'hx-trigger="every 2s"' in page and "Generating the missing completions" in page


def test_ratings_download_is_jsonl_in_the_chosen_format(staff_client, rated):
    response = staff_client.post(f"/staff/p/{rated.slug}/export/ratings/", {"format": "kto"})
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    lines = response.content.decode().splitlines()
    assert len(lines) == 3  # scores 1, 2, 4 (the 3 is neutral)
    bad = staff_client.post(f"/staff/p/{rated.slug}/export/ratings/", {"format": "csv"}, follow=True)
    assert "Unknown export format" in bad.content.decode()


def test_an_empty_ratings_download_says_why_instead_of_sending_an_empty_file(staff_client, project):
    response = staff_client.post(f"/staff/p/{project.slug}/export/ratings/", {"format": "pairs"}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain and "attachment" not in response.get("Content-Disposition", "")
    assert "Nothing to export yet: a pair needs a pairwise choice of A or B" in page
    assert not AuditEvent.objects.filter(action="export_ratings").exists()


def test_version_zero_has_no_parent_and_no_run(staff_client, project):
    page = staff_client.get(f"/staff/p/{project.slug}/versions/").content.decode()
    assert ">base<" in page and ModelVersion.objects.count() == 1


def test_a_runs_version_that_is_no_longer_served_is_not_labelled_served(staff_client, project):
    # After a rollback the runs table and the run's page still said "v1 (served)" beside "Served: v0".
    v1 = add_version(project, 1, prompts=[])
    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=project.served_version, status="succeeded",
        result_version=v1, promoted=True,
    )
    for path in ("runs/", f"runs/{run.pk}/"):
        page = staff_client.get(f"/staff/p/{project.slug}/{path}").content.decode()
        assert "v1 (was served)" in page and "v1 (served)" not in page, path
    project.served_version = v1
    project.save(update_fields=["served_version"])
    for path in ("runs/", f"runs/{run.pk}/"):
        page = staff_client.get(f"/staff/p/{project.slug}/{path}").content.decode()
        assert "v1 (served)" in page and "was served" not in page, path


def test_a_held_back_runs_version_served_anyway_is_labelled_served(staff_client, project):
    v1 = add_version(project, 1, prompts=[])
    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=project.served_version, status="succeeded",
        result_version=v1, promoted=False, held_back_reason="KL to the base 0.9 is over the limit 0.5.",
    )
    project.served_version = v1
    project.save(update_fields=["served_version"])
    page = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert "produced v1 (served)" in page and "(not served)" not in page
