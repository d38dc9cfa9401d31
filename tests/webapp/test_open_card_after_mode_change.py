"""A card left open while staff change the project's rating mode or rubric (issue 20: "changing a project's
mode or rubric mid-way keeps earlier ratings valid"): the card's form says which mode and criteria it was
rendered with, and a submit of an outdated form is refused with a clear message, nothing stored; the item
comes back as the new mode rates it, with nothing of the old form filled in."""

import re

import pytest
from django.urls import reverse

from tests.webapp.annotation_helpers import make_project, make_rank_group
from webapp.annotation.models import Ranking, Rating
from webapp.policies import services as policy_services
from webapp.policies.models import Project

HTMX = {"HTTP_HX_REQUEST": "true"}
RUBRIC = [{"name": "Helpful", "weight": 1.0, "description": ""}, {"name": "Safe", "weight": 1.0, "description": ""}]


def card_form(html: str) -> dict:
    """The rate form's hidden fields and radio/select names as a browser would post them (first value of each)."""
    form = html.split('<form class="rate"')[1].split("</form>")[0]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))


@pytest.fixture
def ranking_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="rk", mode="ranking", rank_k=3, rubric=RUBRIC)


@pytest.fixture
def rubric_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="rb", mode="rubric", rubric=RUBRIC)


def test_a_ranking_sent_after_the_project_turned_rubric_is_refused_and_the_card_asks_for_rubric_scores(
    client, ranking_project, annotator, staff_user, make_completion
):
    group = make_rank_group(ranking_project, make_completion)
    client.force_login(annotator)
    card = client.post(reverse("annotation:next", args=["rk"]), **HTMX).content.decode()
    form = card_form(card)
    assert form["mode"] == "ranking"
    policy_services.project_setup_update(project=ranking_project, user=staff_user, rating_mode="rubric")

    places = {f"rank_{cid}": str(place) for place, cid in enumerate(form["shown"].split(","), 1)}
    answer = client.post(reverse("annotation:rate", args=["rk", group.anchor_id]), {**form, **places}, **HTMX)

    body = answer.content.decode()
    assert "rating mode changed from Rank k outputs to Rubric" in body and "not stored" in body
    assert not Rating.objects.exists() and not Ranking.objects.exists()
    assert card_form(body)["mode"] == "rubric" and 'name="crit_0"' in body


def test_rubric_scores_sent_after_the_rubric_was_reordered_are_refused_not_stored_under_the_wrong_names(
    client, rubric_project, annotator, staff_user, make_completion
):
    item = make_completion(rubric_project)
    client.force_login(annotator)
    form = card_form(client.post(reverse("annotation:next", args=["rb"]), **HTMX).content.decode())
    assert (form["mode"], form["crit_0_name"], form["crit_1_name"]) == ("rubric", "Helpful", "Safe")
    policy_services.project_rubric_update(project=rubric_project, user=staff_user, rubric=RUBRIC[::-1])

    answer = client.post(
        reverse("annotation:rate", args=["rb", item.pk]), {**form, "crit_0": "5", "crit_1": "1"}, **HTMX
    )

    body = answer.content.decode()
    assert "rubric changed while this card was open" in body and "not stored" in body
    assert not Rating.objects.exists()
    again = card_form(body)
    assert (again["crit_0_name"], again["crit_1_name"]) == ("Safe", "Helpful") and " checked" not in body
    stored = client.post(reverse("annotation:rate", args=["rb", item.pk]), {**again, "crit_0": "2", "crit_1": "4"}, **HTMX)
    assert stored.status_code == 200
    assert {c["name"]: c["score"] for c in Rating.objects.get().criteria} == {"Safe": 2, "Helpful": 4}


def test_a_criterion_name_stored_with_a_line_break_still_matches_the_crlf_a_browser_posts(
    client, rubric_project, annotator, make_completion
):
    # A browser posts a hidden field's line breaks as CRLF: a name stored with LF (before rubric_check
    # refused control characters) made every rubric rating of the project "rubric changed".
    legacy = [{"name": "Tone\nstyle", "weight": 1.0, "description": ""}, RUBRIC[1]]
    Project.objects.filter(pk=rubric_project.pk).update(rubric=legacy)
    item = make_completion(rubric_project)
    client.force_login(annotator)
    form = card_form(client.post(reverse("annotation:next", args=["rb"]), **HTMX).content.decode())
    assert form["crit_0_name"] == "Tone\nstyle"
    posted = {**form, "crit_0_name": form["crit_0_name"].replace("\n", "\r\n"), "crit_0": "4", "crit_1": "2"}

    answer = client.post(reverse("annotation:rate", args=["rb", item.pk]), posted, **HTMX)

    assert answer.status_code == 200 and "rubric changed" not in answer.content.decode()
    assert {c["name"]: c["score"] for c in Rating.objects.get().criteria} == {"Tone\nstyle": 4, "Safe": 2}
