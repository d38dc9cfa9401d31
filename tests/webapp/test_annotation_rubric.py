"""Rubric mode (named criteria with weights, each scored 1–5) and changing a project's mode or rubric mid-way."""

import json

import pytest
from django.core.exceptions import ValidationError

from tests.webapp.annotation_helpers import make_project
from webapp.annotation import figures, selectors, services
from webapp.annotation.models import Rating
from webapp.errors import ApplicationError
from webapp.policies.models import rubric_check
from webapp.training import exports
from webapp.training import services as training_services

RUBRIC = [
    {"name": "helpful", "weight": 3, "description": "answers the prompt"},
    {"name": "fluent", "weight": 1},
]


@pytest.fixture
def rubric_project(db, tiny_model_dir, models_dir):
    return make_project(tiny_model_dir, slug="rb", mode="rubric", rubric=RUBRIC)


def _batch_rewards(project):
    ratings = list(selectors.new_ratings(project=project))
    config = training_services.pg_config_for(project=project, overrides={"annotator_norm": False})
    batch = training_services.training_batch_build(project=project, ratings=ratings, config=config)
    return dict(zip(sorted({r.completion_id for r in ratings}), batch.rewards))


def test_a_rubric_rating_stores_each_criterion_with_its_weight_and_the_reward_is_the_weighted_mean(
    rubric_project, annotator, make_completion
):
    completion = make_completion(rubric_project)
    services.lease_next(project=rubric_project, annotator=annotator)
    rating = services.rating_create(annotator=annotator, completion=completion, criteria={"helpful": 5, "fluent": 1})
    rating.refresh_from_db()
    assert rating.criteria == [{"name": "helpful", "weight": 3.0, "score": 5}, {"name": "fluent", "weight": 1.0, "score": 1}]
    assert (rating.score, rating.thumbs_up) == (None, None)
    # (3 * (5-3)/2 + 1 * (1-3)/2) / 4 = (3 - 1) / 4
    assert _batch_rewards(rubric_project) == {completion.pk: pytest.approx(0.5)}


@pytest.mark.parametrize(
    "criteria, message",
    [
        ({"helpful": 5}, "fluent is missing"),
        ({"helpful": 6, "fluent": 1}, "helpful is missing"),
        ({"helpful": 5, "fluent": 1, "witty": 2}, "no criterion 'witty'"),
        (None, "helpful is missing"),
    ],
)
def test_a_rubric_rating_needs_every_criterion_scored_1_to_5_and_stores_nothing_otherwise(
    rubric_project, annotator, make_completion, criteria, message
):
    with pytest.raises(ApplicationError, match=message):
        services.rating_create(annotator=annotator, completion=make_completion(rubric_project), criteria=criteria)
    with pytest.raises(ApplicationError, match="rubric"):
        services.rating_create(annotator=annotator, completion=make_completion(rubric_project), score=4)
    assert not Rating.objects.exists()


@pytest.mark.parametrize(
    "rubric",
    [[], [{"name": "", "weight": 1}], [{"name": "a", "weight": 0}], [{"name": "a"}, {"name": "a"}], [{"name": "a", "wieght": 2}]]
    # control characters (Unicode category Cc): the rate form posts a line break back as CRLF
    + [[{"name": name}] for name in ("Tone\nstyle", "Tone\rstyle", "a\tb", "a\x07b", "a\x85b")],
)
def test_a_rubric_needs_named_criteria_with_positive_weights(rubric):
    with pytest.raises(ValidationError):
        rubric_check(rubric)


def test_a_project_in_rubric_mode_without_a_rubric_is_refused(tiny_model_dir, models_dir, db):
    with pytest.raises(ValidationError, match="1 to 8 criteria"):
        make_project(tiny_model_dir, slug="norubric", mode="rubric")


def test_undo_of_a_rubric_rating_keeps_its_scores_in_the_revision(rubric_project, annotator, make_completion):
    completion = make_completion(rubric_project)
    services.lease_next(project=rubric_project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=completion, criteria={"helpful": 2, "fluent": 4})
    result = services.judgment_undo(project=rubric_project, annotator=annotator)
    assert [c["score"] for c in result.revision.criteria] == [2, 4]
    assert not Rating.objects.exists() and result.lease.completion_id == completion.pk


def test_agreement_is_measured_per_criterion(rubric_project, make_user, make_completion):
    rubric_project.ratings_per_item = 2
    rubric_project.save()
    for _ in range(3):
        make_completion(rubric_project)
    for person in (make_user("r1"), make_user("r2")):
        for helpful in (1, 3, 5):
            lease = services.lease_next(project=rubric_project, annotator=person)
            services.rating_create(annotator=person, completion=lease.completion, criteria={"helpful": helpful, "fluent": 3 if helpful < 5 else 4})
    kinds = {a.kind: a for a in figures.agreement(project=rubric_project)}
    assert kinds["Rubric: helpful"].alpha == pytest.approx(1.0) and kinds["Rubric: helpful"].items == 3
    assert kinds["Rubric: fluent"].level == "ordinal"


def test_changing_mode_and_rubric_mid_way_keeps_earlier_ratings_valid_trained_and_exported_in_their_own_mode(
    tiny_model_dir, models_dir, db, annotator, make_completion
):
    project = make_project(tiny_model_dir, slug="switch", mode="likert")
    likert_item = make_completion(project, text="rated on Likert")
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=likert_item, score=5)

    project.rating_mode, project.rubric = "rubric", RUBRIC
    project.full_clean()
    project.save()
    first_rubric_item = make_completion(project, text="rated on the first rubric")
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=first_rubric_item, criteria={"helpful": 5, "fluent": 1})

    project.rubric = [{"name": "helpful", "weight": 1}, {"name": "safe", "weight": 1}]  # fluent dropped, safe added
    project.full_clean()
    project.save()
    second_rubric_item = make_completion(project, text="rated on the second rubric")
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=second_rubric_item, criteria={"helpful": 1, "safe": 2})

    rewards = _batch_rewards(project)
    assert rewards == {
        likert_item.pk: pytest.approx(1.0),  # (5 - 3) / 2, as on the day it was given
        first_rubric_item.pk: pytest.approx(0.5),  # the weights it was given under: (3*1 + 1*-1) / 4
        second_rubric_item.pk: pytest.approx(-0.75),  # (-1 + -0.5) / 2
    }
    text, n = exports.ratings_jsonl(project=project, fmt="judgments")
    rows = {row["completion"]: row for row in map(json.loads, text.splitlines())}
    assert n == 3
    assert rows["rated on Likert"]["mode"] == "likert" and rows["rated on Likert"]["score"] == 5
    first = rows["rated on the first rubric"]
    assert first["mode"] == "rubric" and [c["name"] for c in first["criteria"]] == ["helpful", "fluent"]
    assert first["criteria"][0] == {"name": "helpful", "weight": 3.0, "score": 5} and first["overall"] == 4.0
    assert [c["name"] for c in rows["rated on the second rubric"]["criteria"]] == ["helpful", "safe"]
    kto = {row["completion"]: row["label"] for row in map(json.loads, exports.ratings_jsonl(project=project, fmt="kto")[0].splitlines())}
    assert kto == {"rated on Likert": True, "rated on the first rubric": True, "rated on the second rubric": False}
    kinds = {a.kind for a in figures.agreement(project=project)}
    assert {"Likert 1–5", "Rubric: helpful", "Rubric: fluent", "Rubric: safe"} <= kinds


def test_the_page_scores_a_rubric_from_its_form(client, rubric_project, annotator, make_completion):
    from webapp.policies.services import membership_add

    membership_add(project=rubric_project, user=annotator)
    client.force_login(annotator)
    completion = make_completion(rubric_project)
    htmx = {"HTTP_HX_REQUEST": "true"}
    page = client.post(f"/p/{rubric_project.slug}/annotate/next/", **htmx).content.decode()
    assert "helpful" in page and "answers the prompt" in page and "<kbd>Enter</kbd> submit scores" in page
    url = f"/p/{rubric_project.slug}/annotate/{completion.pk}/rate/"
    assert "fluent is missing" in client.post(url, {"crit_0": "4"}, **htmx).content.decode()
    client.post(url, {"crit_0": "4", "crit_1": "2"}, **htmx)
    assert [c["score"] for c in Rating.objects.get().criteria] == [4, 2]


def test_undo_on_the_page_fills_the_rubric_scores_in_again_by_criterion_name(
        client, rubric_project, annotator, make_completion):
    import re

    from webapp.policies.services import membership_add, project_rubric_update

    membership_add(project=rubric_project, user=annotator)
    client.force_login(annotator)
    completion = make_completion(rubric_project)
    htmx = {"HTTP_HX_REQUEST": "true"}
    client.post(f"/p/{rubric_project.slug}/annotate/next/", **htmx)
    client.post(f"/p/{rubric_project.slug}/annotate/{completion.pk}/rate/",
                {"crit_0": "4", "crit_1": "2", "comment": "fluent enough"}, **htmx)

    page = client.post(f"/p/{rubric_project.slug}/annotate/undo/", **htmx).content.decode()

    assert not Rating.objects.exists()
    assert "Undone: you had chosen <strong>helpful 4, fluent 2</strong>" in page
    checked = re.findall(r'<input type="radio" name="(crit_\d)" value="(\d)" checked>', page)
    assert checked == [("crit_0", "4"), ("crit_1", "2")]
    assert "fluent enough</textarea>" in page

    # The rubric changed between the rating and its undo: only criteria of the same name come back.
    client.post(f"/p/{rubric_project.slug}/annotate/{completion.pk}/rate/", {"crit_0": "5", "crit_1": "1"}, **htmx)
    project_rubric_update(project=rubric_project, rubric=[{"name": "safe", "weight": 1}, {"name": "helpful", "weight": 3}])
    page = client.post(f"/p/{rubric_project.slug}/annotate/undo/", **htmx).content.decode()
    assert re.findall(r'<input type="radio" name="(crit_\d)" value="(\d)" checked>', page) == [("crit_1", "5")]
    assert 'class="criterion current" data-criterion="0"' in page  # the keys start at the one left to score
