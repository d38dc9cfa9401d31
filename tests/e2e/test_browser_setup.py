"""Project setup in a real browser, from an empty database: create a project, import prompts after a
preview (a bad file first), write guidelines in Markdown, add an annotator, who then sees the project."""

import json

import pytest

from webapp.annotation.models import Prompt
from webapp.policies.models import Membership, Project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_setting_a_project_up_from_an_empty_database(login_page, live_server, make_user, tiny_model_dir, tmp_path, settings, screenshot):
    settings.DATA_DIR = tmp_path  # uploads land here
    assert not Project.objects.exists()
    root = make_user("root", staff=True, member=False)
    reader = make_user("reader", member=False)
    page = login_page(root)
    assert "No projects yet" in page.locator("main").inner_text()
    page.click("#new-project")
    page.fill("#id_slug", "films")
    page.fill("#id_title", "Film reviews")
    page.fill("#id_base_model_path", str(tiny_model_dir))
    page.select_option("#id_rating_mode", "thumbs")
    page.fill("#id_guidelines", "Rate the **continuation** only.")
    page.click("#project-new-form button[type=submit]")
    page.locator("#flash").get_by_text("Project films created").wait_for()
    project = Project.objects.get(slug="films")
    assert project.rating_mode == "thumbs" and project.served_version.number == 0

    bad = tmp_path / "bad.csv"
    bad.write_text("text,held_out\nA fine prompt,no\n,no\nAnother,maybe\n")
    page.set_input_files("#id_file", str(bad))
    page.click("#setup-prompts button[type=submit]")
    page.locator("#import-errors").wait_for()
    assert page.locator("#import-errors tbody tr").count() == 2
    assert page.locator("#import-confirm").count() == 0
    assert not Prompt.objects.filter(project=project).exists()

    good = tmp_path / "prompts.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"Continue this review: film {i} was", "held_out": i < 2}) for i in range(15)))
    page.set_input_files("#id_file", str(good))
    page.click("#setup-prompts button[type=submit]")
    page.locator("#import-rows").wait_for()
    assert page.locator("#import-rows tbody tr").count() == 10
    assert "15 prompts, 2 held out" in page.locator("#import-preview").inner_text()
    screenshot(page, "project-setup-preview")
    page.click("#import-confirm button")
    page.locator("#flash").get_by_text("Imported 15 prompts").wait_for()
    assert Prompt.objects.filter(project=project).count() == 15

    page.fill("#id_guidelines", "## What to reward\n\n- stays on the film\n- **no** emojis")
    page.click("#setup-settings button[type=submit]")
    page.locator("#flash").get_by_text("Project settings saved").wait_for()
    assert page.locator("#guidelines-preview .guidelines-text h2").inner_text() == "What to reward"

    page.fill("#id_username", "reader")
    page.select_option("#id_role", "annotator")
    page.click("#member-add-form button[type=submit]")
    page.locator('#members tr[data-member="reader"]').wait_for()
    assert Membership.objects.get(project=project, user=reader).role == "annotator"
    screenshot(page, "project-setup")

    annotator_page = login_page(reader)
    annotator_page.wait_for_url(f"**/p/films/annotate/")  # a lone project's annotator goes straight to it
    assert "What to reward" in annotator_page.locator("#guidelines").text_content()  # collapsed until g
