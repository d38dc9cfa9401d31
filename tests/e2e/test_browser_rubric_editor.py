"""The rubric editor on the setup page in a real browser: a duplicate name is refused with the reason,
then a valid rubric is saved, the project switched to rubric mode, and an annotator scores it.

Screenshot: test-artifacts/project-setup-rubric.png (copied to docs/ by `make screenshots`).
"""

import pytest

from webapp.annotation.models import Rating
from webapp.policies.models import Project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_write_a_rubric_in_setup_and_annotators_score_it(
    login_page, live_server, project, staff_user, annotator, make_completion, screenshot
):
    page = login_page(staff_user)
    page.goto(f"{live_server.url}/staff/p/{project.slug}/setup/")
    page.fill('[aria-label="Criterion 1 name"]', "helpful")
    page.fill('[aria-label="Criterion 1 weight"]', "2")
    page.fill('[aria-label="Criterion 1 description"]', "does what the prompt asks")
    page.fill('[aria-label="Criterion 2 name"]', "helpful")
    page.click("#rubric-form button[type=submit]")
    page.locator("#flash").get_by_text("names must be unique").wait_for()
    assert page.input_value('[aria-label="Criterion 2 name"]') == "helpful"  # kept as typed
    assert Project.objects.get(pk=project.pk).rubric == []

    page.fill('[aria-label="Criterion 2 name"]', "fluent")
    page.click("#rubric-form button[type=submit]")
    page.locator("#flash").get_by_text("Rubric saved").wait_for()
    screenshot(page, "project-setup-rubric")
    page.select_option("#id_rating_mode", "rubric")
    page.click("#setup-settings button[type=submit]")
    page.locator("#flash").get_by_text("Project settings saved").wait_for()
    project.refresh_from_db()
    assert project.rating_mode == "rubric"
    assert project.rubric == [
        {"name": "helpful", "weight": 2.0, "description": "does what the prompt asks"},
        {"name": "fluent", "weight": 1.0, "description": ""},
    ]

    item = make_completion(project, text="a completion to score")
    rater = login_page(annotator)
    rater.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    rater.wait_for_selector(f'#card[data-completion="{item.pk}"]')
    assert "does what the prompt asks" in rater.locator("#card").inner_text()
    for key in ("4", "3", "Enter"):
        rater.keyboard.press(key)
    rater.locator(f'#card:not([data-completion="{item.pk}"])').wait_for()
    assert Rating.objects.get().criteria == [
        {"name": "helpful", "weight": 2.0, "score": 4}, {"name": "fluent", "weight": 1.0, "score": 3},
    ]
