"""The setup forms tell staff the bounds the project really has, and say why a preview failed."""

from django.core.files.uploadedfile import SimpleUploadedFile

from webapp.policies.models import Project

SETTINGS = {"title": "Reviews", "rating_mode": "likert", "guidelines": "", "ratings_per_item": 1,
            "completions_per_prompt": 1, "pool_target": 32}


def test_a_negative_ratings_per_item_is_refused_with_the_projects_real_lower_bound(staff_client, project):
    answer = staff_client.post(f"/staff/p/{project.slug}/setup/settings/", {**SETTINGS, "ratings_per_item": -3})
    page = answer.content.decode()
    assert answer.status_code == 400
    # The model needs at least 1: "at least 0" (the field type's bound) sent people to type 0, refused next.
    assert "greater than or equal to 1." in page and "greater than or equal to 0." not in page
    project.refresh_from_db()
    assert project.ratings_per_item == 1


def test_the_number_inputs_carry_the_models_bounds(staff_client, project):
    page = staff_client.get(f"/staff/p/{project.slug}/setup/").content.decode()
    assert 'name="ratings_per_item" value="1" min="1" max="10"' in page
    assert 'name="completions_per_prompt" value="1" min="1" max="8"' in page
    assert 'name="pool_target" value="4" min="1" max="1000"' in page
    new = staff_client.get("/projects/new/").content.decode()
    assert 'name="ratings_per_item" value="1" min="1" max="10"' in new


def test_a_new_project_with_zero_ratings_per_item_is_refused_with_the_same_bound(staff_client, tiny_model_dir):
    answer = staff_client.post("/projects/new/", {**SETTINGS, "slug": "zero", "base_model_path": str(tiny_model_dir),
                                                  "ratings_per_item": 0})
    assert answer.status_code == 400 and "greater than or equal to 1." in answer.content.decode()
    assert not Project.objects.filter(slug="zero").exists()


def test_previewing_an_empty_file_says_the_file_is_the_problem_not_that_none_was_chosen(staff_client, project):
    answer = staff_client.post(f"/staff/p/{project.slug}/setup/prompts/preview/",
                               {"file": SimpleUploadedFile("prompts.jsonl", b"")})
    page = answer.content.decode()
    assert answer.status_code == 400
    assert "Choose a .jsonl or .csv file" not in page
    assert "Nothing was previewed" in page and "The submitted file is empty." in page


TRAINING = {"min_new_ratings": 7, "guard_max_kl": 0.3, "guard_min_distinct2_ratio": 0.6,
            "guard_max_identical_fraction": 0.4, "guard_eval_prompts": 8, "arena_voters": "staff",
            "arena_min_votes": 20, "production_feedback_weight": 0.25}


def test_the_runs_page_settings_carry_and_enforce_the_models_bounds(staff_client, project):
    page = staff_client.get(f"/staff/p/{project.slug}/runs/").content.decode()
    assert 'min="1"' in page.split('name="min_new_ratings"')[1].split(">")[0]
    assert 'min="1" max="256"' in page.split('name="guard_eval_prompts"')[1].split(">")[0]
    answer = staff_client.post(f"/staff/p/{project.slug}/settings/", {**TRAINING, "arena_min_votes": -2})
    assert answer.status_code == 400
    body = answer.content.decode()
    assert "greater than or equal to 1." in body and "greater than or equal to 0." not in body


def test_the_runs_page_refuses_a_billion_ratings_per_run_with_the_upper_bound(staff_client, project):
    page = staff_client.get(f"/staff/p/{project.slug}/runs/").content.decode()
    assert 'max="100000"' in page.split('name="min_new_ratings"')[1].split(">")[0]
    assert 'max="1000.0"' in page.split('name="guard_max_kl"')[1].split(">")[0]
    answer = staff_client.post(f"/staff/p/{project.slug}/settings/", {**TRAINING, "min_new_ratings": 10**9})
    assert answer.status_code == 400 and "less than or equal to 100000." in answer.content.decode()
    answer = staff_client.post(f"/staff/p/{project.slug}/settings/", {**TRAINING, "guard_max_kl": 1e9})
    assert answer.status_code == 400 and "less than or equal to 1000.0." in answer.content.decode()
    project.refresh_from_db()
    assert (project.min_new_ratings, project.guard_max_kl) == (4, 0.5)


def test_the_gold_settings_refuse_more_gold_answers_than_the_upper_bound(staff_client, project):
    gold = {"gold_rate": "0.2", "gold_min_accuracy": "0.8", "gold_min_answers": "40000", "gold_low_weight": "0.5"}
    answer = staff_client.post(f"/p/{project.slug}/figures/gold/settings/", gold)
    assert answer.status_code == 400 and "less than or equal to 1000." in answer.content.decode()
    assert Project.objects.get(pk=project.pk).gold_min_answers == 5
