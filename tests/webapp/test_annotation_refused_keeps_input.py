"""A submit the page refuses (a rubric criterion not scored, an output without a place) shows the same
item again with what the person had entered: the comment, the scores and the places given."""

import re

import pytest

from tests.webapp.annotation_helpers import make_project, make_rank_group
from webapp.annotation.models import Rating
from webapp.policies.services import membership_add

HTMX = {"HTTP_HX_REQUEST": "true"}
RUBRIC = [{"name": "helpful", "weight": 2}, {"name": "fluent", "weight": 1}, {"name": "on topic", "weight": 1}]


def checked(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<input type="radio" name="(crit_\d)" value="(\d)" checked>', page)


@pytest.fixture
def member_client(client, annotator):
    def login(project):
        membership_add(project=project, user=annotator)
        client.force_login(annotator)
        return client

    return login


def test_a_refused_rubric_submit_keeps_the_comment_and_the_scores_given(
    db, tiny_model_dir, models_dir, member_client, make_completion
):
    project = make_project(tiny_model_dir, slug="rb", mode="rubric", rubric=RUBRIC)
    completion = make_completion(project)
    client = member_client(project)
    client.post(f"/p/{project.slug}/annotate/next/", **HTMX)
    url = f"/p/{project.slug}/annotate/{completion.pk}/rate/"

    page = client.post(url, {"crit_0": "4", "crit_1": "²", "crit_2": "9", "comment": "the ending <b>drifts</b>"}, **HTMX).content.decode()

    assert "fluent is missing" in page
    assert checked(page) == [("crit_0", "4")]  # the out-of-range 9 and the "²" int() refuses are not shown back
    assert "the ending &lt;b&gt;drifts&lt;/b&gt;</textarea>" in page
    assert 'class="criterion current" data-criterion="1"' in page  # the keys go on with the first one left
    assert not Rating.objects.exists()


def test_a_refused_ranking_keeps_the_places_given_and_the_comment(
    db, tiny_model_dir, models_dir, member_client, make_completion
):
    project = make_project(tiny_model_dir, slug="rk", mode="ranking", rank_k=3)
    group = make_rank_group(project, make_completion)
    client = member_client(project)
    client.post(f"/p/{project.slug}/annotate/next/", **HTMX)
    first, second, third = sorted(group.members.values_list("pk", flat=True))

    page = client.post(f"/p/{project.slug}/annotate/{group.anchor_id}/rate/",
                       {f"rank_{second}": "1", f"rank_{third}": "7", "comment": "close call"}, **HTMX).content.decode()

    assert "Give every output a place" in page
    assert re.findall(r'<select name="rank_(\d+)"[^>]*>(?:(?!</select>).)*?<option value="(\d)" selected>', page, re.S) == [(str(second), "1")]
    assert "close call</textarea>" in page


def test_a_card_for_another_item_after_a_refusal_starts_empty(
    db, tiny_model_dir, models_dir, member_client, make_completion, make_user
):
    project = make_project(tiny_model_dir, slug="rb", mode="rubric", rubric=RUBRIC)
    taken, mine = make_completion(project), make_completion(project)
    client = member_client(project)
    from webapp.annotation import services

    services.lease_next(project=project, annotator=make_user("other"))  # someone else holds the first item
    page = client.post(f"/p/{project.slug}/annotate/{taken.pk}/rate/",
                       {"crit_0": "3", "crit_1": "3", "crit_2": "3", "comment": "for the other item"}, **HTMX).content.decode()

    assert "Someone else holds this item" in page or "not in your queue" in page
    assert f'data-completion="{mine.pk}"' in page
    assert checked(page) == [] and "for the other item" not in page
