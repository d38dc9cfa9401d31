"""A project with no prompt to sample says so on the waiting card, instead of "The model is writing new
outputs…", which never comes true there."""

import pytest

from tests.webapp.annotation_helpers import make_project
from webapp.annotation.models import Prompt
from webapp.policies.services import membership_add

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.mark.parametrize("prompts", ["none", "held_out_only"])
def test_the_waiting_card_of_a_project_without_prompts_to_rate_says_so(
    db, tiny_model_dir, models_dir, client, annotator, prompts
):
    project = make_project(tiny_model_dir, slug="empty", mode="likert", n_prompts=0 if prompts == "none" else 2)
    Prompt.objects.filter(project=project).update(held_out=True)
    membership_add(project=project, user=annotator)
    client.force_login(annotator)

    card = client.post(f"/p/{project.slug}/annotate/next/", **HTMX).content.decode()

    assert "No prompts to rate yet" in card and "writing new outputs" not in card
    assert ("held out for evaluation" in card) == (prompts == "held_out_only")
    assert 'hx-trigger="every 3s"' in card  # it starts by itself once prompts are imported


def test_a_project_with_prompts_still_says_the_model_is_writing(db, tiny_model_dir, models_dir, client, annotator):
    project = make_project(tiny_model_dir, slug="full", mode="likert", n_prompts=2)
    membership_add(project=project, user=annotator)
    client.force_login(annotator)
    card = client.post(f"/p/{project.slug}/annotate/next/", **HTMX).content.decode()
    assert "The model is writing new outputs" in card and "No prompts to rate yet" not in card
