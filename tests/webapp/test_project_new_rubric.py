"""The New project form creates a rubric-mode project at once: the rubric's rows are on the same
form (they used to be only on the setup page, so Rubric mode was offered and then refused)."""

from webapp.annotation.models import Completion
from webapp.policies.models import Project

NEW = "/projects/new/"


def _new(tiny_model_dir, slug, mode, **rows):
    return {"slug": slug, "title": slug.title(), "base_model_path": str(tiny_model_dir), "rating_mode": mode,
            "guidelines": "", "ratings_per_item": 1, "completions_per_prompt": 1, "pool_target": 8, **rows}


def test_a_project_is_created_in_rubric_mode_with_the_rubric_typed_on_the_new_project_form(
    staff_client, tiny_model_dir, models_dir, make_completion
):
    page = staff_client.get(NEW).content.decode()
    assert 'id="new-rubric"' in page and 'name="name_0"' in page and 'name="weight_0"' in page

    rows = {"name_0": "helpful", "weight_0": "2", "description_0": "Answers the question", "name_1": "fluent", "weight_1": ""}
    answer = staff_client.post(NEW, _new(tiny_model_dir, "rubnew", "rubric", **rows))

    assert answer.status_code == 302 and answer["Location"] == "/staff/p/rubnew/setup/"
    project = Project.objects.get(slug="rubnew")
    assert project.rating_mode == "rubric"
    assert [(c["name"], c["weight"]) for c in project.rubric] == [("helpful", 2.0), ("fluent", 1.0)]
    project.prompts.create(text="Write about rubrics:")
    make_completion(project)
    card = staff_client.post(f"/p/{project.slug}/annotate/next/", follow=True).content.decode()
    assert "helpful" in card and "Answers the question" in card


def test_rubric_mode_without_a_criterion_or_with_a_bad_one_is_refused_on_the_form(staff_client, tiny_model_dir, models_dir):
    answer = staff_client.post(NEW, _new(tiny_model_dir, "rubnone", "rubric"))
    assert answer.status_code == 400 and "name at least one criterion" in answer.content.decode()
    twice = {"name_0": "helpful", "weight_0": "1", "name_1": "helpful", "weight_1": "1"}
    answer = staff_client.post(NEW, _new(tiny_model_dir, "rubtwice", "rubric", **twice))
    body = answer.content.decode()
    assert answer.status_code == 400 and "names must be unique" in body and 'value="helpful"' in body  # kept as typed
    assert not Project.objects.filter(slug__in=["rubnone", "rubtwice"]).exists()


def test_rubric_rows_are_ignored_in_another_mode(staff_client, tiny_model_dir, models_dir):
    rows = {"name_0": "helpful", "weight_0": "not a number"}
    answer = staff_client.post(NEW, _new(tiny_model_dir, "likenew", "likert", **rows))
    assert answer.status_code == 302
    project = Project.objects.get(slug="likenew")
    assert project.rating_mode == "likert" and project.rubric == []
    assert not Completion.objects.exists()
