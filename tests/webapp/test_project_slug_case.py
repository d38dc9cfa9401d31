"""Project slugs name folders (``<slug>/run-N``): two slugs differing only in letter case would share them
on a case-insensitive disk, so the second is refused, from the command line and the browser."""

import pytest

from webapp.errors import ApplicationError
from webapp.policies.models import Project
from webapp.policies.services import project_create


def test_a_slug_differing_only_in_case_from_an_existing_one_is_refused(db, tiny_model_dir, models_dir):
    project_create(slug="reviews", title="Reviews", base_model_path=tiny_model_dir)
    with pytest.raises(ApplicationError, match="'reviews' exists already; slugs differing only in case"):
        project_create(slug="Reviews", title="Shouting", base_model_path=tiny_model_dir)
    with pytest.raises(ApplicationError, match="'reviews' exists already."):
        project_create(slug="reviews", title="Again", base_model_path=tiny_model_dir)
    assert list(Project.objects.values_list("slug", flat=True)) == ["reviews"]


def test_the_new_project_page_says_why(client, make_user, tiny_model_dir, db, models_dir):
    project_create(slug="reviews", title="Reviews", base_model_path=tiny_model_dir)
    client.force_login(make_user("boss", staff=True, member=False))
    answer = client.post("/projects/new/", {"slug": "REVIEWS", "title": "R", "base_model_path": str(tiny_model_dir),
                                            "rating_mode": "likert", "ratings_per_item": 1, "completions_per_prompt": 1,
                                            "pool_target": 16})
    assert answer.status_code == 400 and "slugs differing only in case are refused" in answer.content.decode()
    assert not Project.objects.filter(slug="REVIEWS").exists()
